"""The API schema's "not blank" pattern agrees with the contract's reading of blank text.

JSON Schema patterns use ECMA-262 regular expressions, whose ``\\s`` differs from Python's
``str.strip`` (the contract's rule, features.coerce): Python also strips U+001C-U+001F and
U+0085. A text the schema accepts but the contract reads as missing made schemathesis
find a 422 for schema-valid input (procedure_id "\\u001c")."""

import re

from serving.http.schemas import NOT_BLANK_PATTERN

#: ECMA-262 WhiteSpace and LineTerminator: what ``\\s`` means in a JSON Schema pattern.
ECMA_SPACE = "\\t\\n\\x0b\\x0c\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"


def test_the_pattern_refuses_every_character_the_contract_strips():
    # Read the pattern as a JSON Schema validator does: \S and \s with ECMA's meaning.
    ecma = re.compile(NOT_BLANK_PATTERN.replace(r"\S", f"[^{ECMA_SPACE}]").replace(r"\s", ECMA_SPACE))
    for code in range(0x3100):
        c = chr(code)
        if not c.strip():
            assert not ecma.search(c), f"U+{code:04X} is blank to the contract but not to the API schema"
    assert ecma.search("A1-1") and ecma.search(" x ")
