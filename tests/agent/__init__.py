"""Agent tier: the stages' Faust agents driven through test_context, without a broker."""
