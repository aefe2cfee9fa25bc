"""Video input and output: streaming decoders (decord, PyAV, frame folders) and an H.264 writer."""
