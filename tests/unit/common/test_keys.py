from services.common.keys import generate_api_key, hash_key, key_matches, tokens_equal


def test_keys_are_random_and_match_only_their_hash():
    a, b = generate_api_key(), generate_api_key()
    assert a != b and a.startswith("ft_")
    assert key_matches(a, hash_key(a))
    assert not key_matches(b, hash_key(a))
    assert hash_key(a) != a


def test_tokens_equal_rejects_empty_and_different():
    assert tokens_equal("x" * 10, "x" * 10)
    assert not tokens_equal("", "")
    assert not tokens_equal(None, "a")
    assert not tokens_equal("a", "b")
