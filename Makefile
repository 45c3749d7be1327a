# Shortcuts for those who have make; the scripts work without it.
.PHONY: up test bootstrap bench
up:
	scripts/up
test:
	scripts/test
bootstrap:
	scripts/bootstrap --test
