"""What the trained model's server checks of a request (request.py); training/inference.py's handlers use it."""
