import hashlib

from keys.tokens import (
    KEY_LENGTH,
    display_prefix,
    generate_key,
    is_well_formed,
    key_digest,
)


def test_generated_keys_have_the_documented_shape():
    key = generate_key()
    assert key.startswith("nb_")
    assert len(key) == KEY_LENGTH == 41
    assert is_well_formed(key)
    assert display_prefix(key) == key[:11]


def test_generated_keys_are_unique():
    assert len({generate_key() for _ in range(1000)}) == 1000


def test_a_typo_fails_the_checksum_without_any_lookup():
    key = generate_key()
    position = 10
    typo = key[:position] + ("A" if key[position] != "A" else "B") + key[position + 1 :]
    assert not is_well_formed(typo)


def test_strings_that_are_not_keys_are_rejected():
    for text in ["", "nb_", "sk-" + "a" * 38, "nb_" + "!" * 38, generate_key() + "x"]:
        assert not is_well_formed(text)


def test_digest_is_sha256_of_the_key():
    key = generate_key()
    assert key_digest(key) == hashlib.sha256(key.encode()).hexdigest()
