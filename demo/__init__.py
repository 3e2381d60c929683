"""The local journey: the stack deployed to a local AWS emulator (moto's server), no AWS account needed."""
