"""GSM-7 length: one septet per basic character, two per extension character, None outside the alphabet."""

from __future__ import annotations

import pytest

from connectors.sink_notify.gsm7 import SMS_SEGMENT_SEPTETS, gsm7_septets


def test_one_segment_is_160_septets() -> None:
    assert SMS_SEGMENT_SEPTETS == 160


@pytest.mark.parametrize(("text", "septets"), [
    ("", 0),
    ("Your lab results are ready.", 27),
    ("@£$¥_!\"#%&'()*+,-./:;<=>?\n\r", 27),
    ("ΔΦΓΛΩΠΨΣΘΞ ÆæßÉ ÅåØø §¤", 23),
])
def test_basic_table_characters_take_one_septet(text: str, septets: int) -> None:
    assert gsm7_septets(text) == septets


def test_the_spanish_letters_of_the_basic_table_take_one_septet() -> None:
    assert gsm7_septets("éèàìòùñÑüÜ¿¡") == 12
    assert gsm7_septets("médico") == 6


@pytest.mark.parametrize("char", ["€", "[", "]", "{", "}", "^", "~", "\\", "|", "\f"])
def test_extension_table_characters_take_two_septets(char: str) -> None:
    assert gsm7_septets(char) == 2
    assert gsm7_septets(f"ref [{char}]") == 4 + 2 + 2 + 2


@pytest.mark.parametrize("text", ["á", "í", "ó", "ú", "resultados están listos", "VALOR CRÍTICO", "ç", "\t",
                                  "emoji 🙂", "“quotes”"])
def test_characters_outside_the_alphabet_mean_no_gsm7_length(text: str) -> None:
    assert gsm7_septets(text) is None
