"""What one worker does: CIFAR-10 in memory, the set-up (model, DDP, optimizer, schedule,
communication), the training loop, the checkpoint format, and ``comm/`` (the link model, the
DDP hook that applies it, the algorithms).

Imports torch, never ray: the loop is plain PyTorch that ``raybench.driver.train`` runs on each
Ray Train worker and that tests run in-process on a one-rank gloo group. This ``__init__`` imports
nothing, so that ``worker.comm``'s registry stays torch-free for the spec layer.
"""
