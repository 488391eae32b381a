# The two entry points the README promises. Each runs the project-local setup first.
.PHONY: setup demo test

setup:
	scripts/setup.sh

# Main job (for now): a small synthetic cohort (BIDS + DICOM) and a PNG preview of one lesion.
demo: setup
	cargo run --release --bin fcdnode -- synth --out out/demo --subjects 6 --dicom --timings

# Formatting, lints and every test (unit + integration against real peers).
test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
