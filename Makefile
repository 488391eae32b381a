# The two entry points the README promises. Each runs the project-local setup first.
.PHONY: setup demo test recipe fuzz

setup:
	scripts/setup.sh

# Main job: the whole loop on one machine (synthetic patient + control → node → built-in PACS).
demo: setup
	cargo run --release --bin fcdnode -- demo --out out/demo --model models/demo

# Formatting, lints and every test (unit + integration against real peers), then 30 s of each
# fuzz target (fuzz/, stable Rust, no sanitizer; builds with cargo-fuzz, installed if absent).
test: setup
	cargo fmt --all --check
	cargo fmt --manifest-path fuzz/Cargo.toml --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	scripts/fuzz.sh 30

# Long run (about an hour, not in CI): the quick training recipe judged on fresh seeds, with a
# negative control (scripts/recipe_check.sh; SEED=N picks the seeds).
recipe: setup
	scripts/recipe_check.sh

# Long run (about two hours on two cores, not in CI): each fuzz target for an hour, two at a time.
fuzz:
	scripts/fuzz.sh 3600
