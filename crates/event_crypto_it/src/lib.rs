//! Helpers for the integration tests: connection settings come from the environment .ci/test.sh sets.
