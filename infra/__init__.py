"""The CDK app's infrastructure: configuration, constructs and the stack that composes them."""
