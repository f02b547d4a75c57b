"""Evaluation metrics: image quality, lip landmarks, loudness and lip sync.

`synctalk.evaluate.metrics` is numpy/OpenCV only; `synctalk.evaluate.sync`
needs torch and a SyncNet. Import the submodule you need, so computing PSNR
does not load torch.
"""
