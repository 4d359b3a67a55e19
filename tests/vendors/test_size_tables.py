"""The product's vendor size tables agree with the emulators' own copies of each vendor's public reference.

The emulators write the vendor's lists out themselves (they import nothing from `server.backends.vendors.sizes`),
so a typo in the product's table, or in the emulator's, fails here instead of passing both ends of a test.
"""

from __future__ import annotations

import ast
import pathlib

from server.backends.vendors import sizes
from tests.support.emulators import google_api, ideogram_api


def test_ideogram_resolutions_match_the_vendor_enum() -> None:
    product = [sizes.ideogram_resolution(size) for size in sizes.IDEOGRAM_RESOLUTIONS]
    assert len(product) == len(set(product)), "the product's Ideogram table lists a resolution twice"
    assert set(product) == set(ideogram_api.RESOLUTION_ENUM)
    assert len(ideogram_api.RESOLUTION_ENUM) == len(set(ideogram_api.RESOLUTION_ENUM)) == 78
    assert all(ideogram_api.RESOLUTIONS[sizes.ideogram_resolution(size)] == size for size in sizes.IDEOGRAM_RESOLUTIONS)


def test_imagen_aspect_ratios_and_their_sizes_match_the_vendor_reference() -> None:
    assert sizes.IMAGEN_RATIOS == google_api.IMAGEN_RATIOS
    for ratio, (width, height) in google_api.IMAGEN_RATIOS.items():  # each size really has its ratio's shape
        ratio_w, ratio_h = sizes.parse_ratio(ratio)
        assert abs(width / height / (ratio_w / ratio_h) - 1) < 0.08, ratio  # Imagen's sizes are 64-px approximations


def test_gemini_image_ratios_match_the_vendor_reference() -> None:
    assert len(sizes.GEMINI_IMAGE_RATIOS) == len(set(sizes.GEMINI_IMAGE_RATIOS))
    assert set(sizes.GEMINI_IMAGE_RATIOS) == set(google_api.GEMINI_RATIOS)


def test_the_emulators_keep_their_own_copies() -> None:
    """An emulator that imported the product's table would agree with any typo in it."""
    for module in (google_api, ideogram_api):
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {name for name in imported if name and name.startswith("server")}, module.__name__
