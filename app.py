#!/usr/bin/env python3
"""The CDK app: `npx cdk synth` / `make deploy` run this (see cdk.json)."""

from __future__ import annotations

from infra.app import build_app

app, _ = build_app()
app.synth()
