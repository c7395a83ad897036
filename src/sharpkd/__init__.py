"""sharpkd: sharpen blurry photographs with a student network distilled from a deeper teacher.

    from sharpkd import Sharpener
    sharp = Sharpener.from_pretrained("student")(image)
"""

__version__ = "0.1.0"
__all__ = ["Sharpener", "__version__"]


def __getattr__(name: str):
    # imported lazily so that `import sharpkd` (and the CLI's --help) does not load PyTorch
    if name == "Sharpener":
        from sharpkd.infer import Sharpener

        return Sharpener
    raise AttributeError(f"module 'sharpkd' has no attribute {name!r}")
