"""Pretrained parts, one module each: the real thing (hub id or local path) or ``train``.

- :mod:`.tokenizer`: diffusers ``AutoencoderKL`` (``stabilityai/sd-vae-ft-ema``) with its
  scale factor; the one decoder of latents to pixels.
- :mod:`.teacher`: transformers ``Dinov2Model`` (``facebook/dinov2-base``): REPA's tokens.
- :mod:`.classifier`: the offline FD feature network (a small CNN, not the teacher's kind).
- :mod:`.common`: what they share.

``train`` means: the stand-in that this pipeline's own stage trained and saved under
``data/`` (no weights can be downloaded on the machines this project is built on).
Nothing is fetched unless the source is a hub id and ``HF_HUB_OFFLINE`` is not set.
Import the module you need: this package imports none of them, so a stage that uses the
tokenizer does not depend on the teacher's code.
"""
