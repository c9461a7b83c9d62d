"""How passes run fast, kept outside the model; `policy.choose_engine` says what runs where."""
