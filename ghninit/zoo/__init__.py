"""Where GHN weights come from: names, sources, downloads, verification, the cache, cards and conversion.

:mod:`~ghninit.zoo.hub` resolves a name, Hub repo, folder or file to a GHN
(:func:`load_ghn`, :func:`download_ghn`); :mod:`~ghninit.zoo.registry` holds the known names and
their pinned sources; :mod:`~ghninit.zoo.official` and :mod:`~ghninit.zoo.ghn3_weights` fetch and
convert the reference's published files (read with :mod:`~ghninit.zoo.safe_pickle`, never the
standard unpickler); :mod:`~ghninit.zoo.cache` stores converted copies; :mod:`~ghninit.zoo.files`
reads local files; :mod:`~ghninit.zoo.cards` and :mod:`~ghninit.zoo.catalog` describe them;
:mod:`~ghninit.zoo.check` compares a GHN-3 with the reference's published norms. The GHNs trained
by this project ship in ``weights/``.
"""

from .catalog import list_ghns
from .hub import download_ghn, load_ghn

__all__ = ["download_ghn", "list_ghns", "load_ghn"]
