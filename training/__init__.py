"""The training job: runs in the SageMaker PyTorch container, locally and in tests (never imports infra/ or the SDK).

Keep this file free of imports: decoding worker processes import training.dataset.dicom, and anything imported here
would be imported by each of them too.
"""
