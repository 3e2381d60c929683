"""The app's edge: git facts turned into defaults."""

from __future__ import annotations

import pytest

from infra.app import https_origin


@pytest.mark.parametrize(("origin", "expected"), [
    ("git@github.com:org/repo.git", "https://github.com/org/repo.git"),
    ("git@github.com:org/repo", "https://github.com/org/repo.git"),
    ("ssh://git@gitlab.example.com/group/sub/repo.git", "https://gitlab.example.com/group/sub/repo.git"),
    ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
    ("/srv/git/repo", "/srv/git/repo"),  # left for the configuration to reject with its reason
])
def test_an_ssh_origin_is_cloned_over_https(origin, expected):
    assert https_origin(origin) == expected
