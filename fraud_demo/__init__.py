"""Card-fraud demo: synthetic cards, merchants, transactions and late labels for Sluice."""
