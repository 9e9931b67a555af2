# SPDX-License-Identifier: AGPL-3.0-or-later
"""Lattice math: the E8 lattice, the extended binary Golay code and the Leech lattice Λ24."""

from lila_model.lattice.e8 import e8_roots, nearest_e8
from lila_model.lattice.golay import (
    golay_codewords,
    golay_generator_matrix,
    golay_syndrome,
    hexacode_words,
    is_golay_codeword,
    mog_column_patterns,
)
from lila_model.lattice.leech import (
    LEECH_DIM,
    LEECH_KISSING_NUMBER,
    LEECH_MIN_NORM2,
    LEECH_SCALE,
    is_leech_point,
    leech_generator_matrix,
    leech_gram_matrix,
    leech_min_vectors,
    nearest_leech,
    nearest_leech_reference,
    nearest_leech_with_distance,
)

__all__ = [
    "LEECH_DIM",
    "LEECH_KISSING_NUMBER",
    "LEECH_MIN_NORM2",
    "LEECH_SCALE",
    "e8_roots",
    "golay_codewords",
    "golay_generator_matrix",
    "golay_syndrome",
    "hexacode_words",
    "is_golay_codeword",
    "is_leech_point",
    "leech_generator_matrix",
    "leech_gram_matrix",
    "leech_min_vectors",
    "mog_column_patterns",
    "nearest_e8",
    "nearest_leech",
    "nearest_leech_reference",
    "nearest_leech_with_distance",
]
