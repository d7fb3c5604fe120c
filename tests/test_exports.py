"""The public API is curated: ``sangkien.__all__`` lists exactly the public names."""

from __future__ import annotations

import sangkien


def test_all_is_complete_and_importable() -> None:
    """Every public attribute of the package is in __all__, and every name there exists."""
    public = {n for n in dir(sangkien) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(sangkien, n)).__name__ == "module"}
    assert set(sangkien.__all__) == public - modules
    for name in sangkien.__all__:
        assert getattr(sangkien, name) is not None


def test_exceptions_share_one_root() -> None:
    """Every exception the package exports derives from SangkienError."""
    for name in sangkien.__all__:
        obj = getattr(sangkien, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sangkien.SangkienError), name
