"""Blind deblurring: estimate the blur from the photo, then invert it with a learned prior.

* :mod:`sharpkd.deblur.estimate` -- a coarse-to-fine kernel estimator (L0 gradient prior, FFT solves).
* :mod:`sharpkd.deblur.solve` -- non-blind deconvolution by half-quadratic splitting with a denoiser
  (DPIR-style plug-and-play), with the boundary handled by padding.
* :mod:`sharpkd.deblur.denoiser` -- the denoiser prior (FFDNet, converted weights).
* :mod:`sharpkd.deblur.teacher` -- estimator + solver wrapped as the blind teacher model.
"""
