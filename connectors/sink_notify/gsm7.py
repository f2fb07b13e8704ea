"""Length of a text in GSM-7 (3GPP TS 23.038 / GSM 03.38), the 7-bit SMS alphabet.

A single SMS holds 160 septets. Characters of the basic table take one septet,
characters of the extension table take two (an escape plus the character). Any
other character forces the whole message into UCS-2, where one segment holds
only 70 characters: notification templates must avoid that, so it counts as
"does not fit" here (``None``). Note that á í ó ú are not in the alphabet,
while é è à ì ò ù ñ Ñ ü Ü ¿ ¡ are.
"""

from __future__ import annotations

SMS_SEGMENT_SEPTETS = 160

# The basic table in code order 0x00-0x7F, without 0x1B (the escape to the extension table).
_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENSION = frozenset("\f^{}\\[~]|€")


def gsm7_septets(text: str) -> int | None:
    """Septets needed to send ``text`` in GSM-7, or None if a character is outside the alphabet."""
    septets = 0
    for char in text:
        if char in _BASIC:
            septets += 1
        elif char in _EXTENSION:
            septets += 2
        else:
            return None
    return septets
