"""Training with PyTorch Lightning (the ``train`` extra): the datamodule, the LightningModule, the TensorBoard
review and the training job that calibrates, exports and scores what it trained."""
