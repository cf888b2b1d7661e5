//! Helpers shared by the core's scenario tests (native and wasm32).

use wsgate::Policy;

/// Asserts that each case, made into a whole configuration by `whole`, is refused with an error
/// at `field` whose text contains `problem`.
pub fn assert_refused<S: AsRef<str>>(cases: &[(S, &str, &str)], whole: impl Fn(&str) -> String) {
    for (case, field, problem) in cases {
        let json = whole(case.as_ref());
        let error = match Policy::from_json(json.as_bytes()) {
            Ok(_) => panic!("accepted: {}", case.as_ref()),
            Err(error) => error,
        };
        assert_eq!(error.field, *field, "{}: {error}", case.as_ref());
        assert!(error.problem.contains(problem), "{}: {error}", case.as_ref());
    }
}
