# The two entry points the README promises. Each runs the project-local setup first.
.PHONY: setup demo test recipe

setup:
	scripts/setup.sh

# Main job: the whole loop on one machine (synthetic patient + control → node → built-in PACS).
demo: setup
	cargo run --release --bin fcdnode -- demo --out out/demo --model models/demo

# Formatting, lints and every test (unit + integration against real peers).
test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

# Long run (about an hour, not in CI): the quick training recipe judged on fresh seeds, with a
# negative control (scripts/recipe_check.sh; SEED=N picks the seeds).
recipe: setup
	scripts/recipe_check.sh
