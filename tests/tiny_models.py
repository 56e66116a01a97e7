"""The tiny models of the contract suite (:mod:`zoo.testing.models`), under the name the tests import."""

from zoo.testing.models import *  # noqa: F403
from zoo.testing.models import ARCHITECTURES, CHAT_TEMPLATE, COMMON, SPECIAL_TOKENS  # noqa: F401
