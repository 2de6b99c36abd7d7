"""metallm's decision logic: arms and prices, rewards, embeddings, the Vowpal Wabbit policy,
data set importers, offline training, budget calibration and evaluation.

Pure logic: nothing here opens a socket, and nothing here imports ``workers``.
"""
