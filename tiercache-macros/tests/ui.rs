//! Compile errors of `#[cached]`: every misuse is rejected with a message, at the right place,
//! that says what to write instead. The expected compiler output is in `tests/ui/*.stderr`;
//! after a deliberate change, regenerate it with `TRYBUILD=overwrite cargo test -p
//! tiercache-macros --test ui` and read the new messages before committing them.

#[test]
fn misuse_is_a_compile_error_that_says_what_to_do() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
