"""What a training run ships: the calibration fitted after training, the ONNX export, the checked int8 copy.

Built from checkpoints with torch alone: nothing here needs Lightning.
"""
