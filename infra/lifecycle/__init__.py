"""The notebook instance's lifecycle scripts (bash, beside this file) and their rendering at synth (`render`)."""
