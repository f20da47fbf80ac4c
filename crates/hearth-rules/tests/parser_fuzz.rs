//! The parser and evaluator never panic, whatever the input.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hearth_rules::{bench_support::CHAT_RULES, Method, RuleRequest, Ruleset};
use proptest::prelude::*;

const VOCAB: &[&str] = &[
    "match",
    "/a",
    "/{b}",
    "/{r=**}",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "allow",
    "read",
    "write",
    "get",
    "list",
    "create",
    ":",
    "if",
    ";",
    ",",
    "function",
    "f",
    "x",
    "let",
    "=",
    "return",
    "true",
    "false",
    "null",
    "1",
    "2.5",
    "'s'",
    "\"t\"",
    "&&",
    "||",
    "!",
    "==",
    "!=",
    "<",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "?",
    "in",
    "is",
    "string",
    "int",
    ".",
    "size",
    "request",
    "resource",
    "data",
    "auth",
    "uid",
    "get(/a/$(b))",
    "exists(/a/b)",
    "$(",
    "keys",
    "hasAny",
    "diff",
    "matches",
    "service",
    "cloud.firestore",
    "rules_version",
    "'2'",
    "b",
    "r",
    "math",
    "abs",
    "toSet",
    "\n",
];

fn evaluate_all_methods(rules: &Ruleset) {
    let resource = standard_resource();
    for method in [
        Method::Get,
        Method::List,
        Method::Create,
        Method::Update,
        Method::Delete,
    ] {
        for path in ["a/b", "things/t1", "a/b/c/d"] {
            let path = hearth_protocol::DocPath::parse(path).unwrap();
            let _ = rules.evaluate(
                &RuleRequest {
                    principal: &alice(),
                    method,
                    path: &path,
                    resource: Some(&resource),
                    new_data: Some(&resource.fields),
                    time: hearth_protocol::Timestamp(0),
                },
                &lookup(),
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = Ruleset::parse(&text);
    }

    #[test]
    fn token_soup_parses_or_fails_cleanly_and_evaluates_without_panic(
        tokens in proptest::collection::vec(proptest::sample::select(VOCAB), 0..60)
    ) {
        let text = tokens.join(" ");
        if let Ok(rules) = Ruleset::parse(&text) {
            evaluate_all_methods(&rules);
        }
        // Conditions built from the vocabulary, wrapped in a valid rule.
        let cond = format!("match /{{c}}/{{id}} {{ allow read, write: if {text}; }}");
        if let Ok(rules) = Ruleset::parse(&cond) {
            evaluate_all_methods(&rules);
        }
    }

    #[test]
    fn mutated_real_rules_never_panic(
        at in 0usize..CHAT_RULES.len(),
        len in 0usize..40,
        insert in "\\PC{0,5}",
    ) {
        let mut text: Vec<char> = CHAT_RULES.chars().collect();
        let at = at.min(text.len());
        let end = (at + len).min(text.len());
        text.splice(at..end, insert.chars());
        let text: String = text.into_iter().collect();
        if let Ok(rules) = Ruleset::parse(&text) {
            evaluate_all_methods(&rules);
        }
    }
}

#[test]
fn deepest_nesting_is_refused_without_overflowing_a_small_caller_stack() {
    let cases = [
        format!(
            "match /a {{ allow read: if {}true{}; }}",
            "(".repeat(200),
            ")".repeat(200)
        ),
        format!("match /a {{ allow read: if {}true; }}", "!".repeat(200)),
        format!(
            "match /a {{ allow read: if {}1{}; }}",
            "[".repeat(200),
            "]".repeat(200)
        ),
        format!(
            "match /a {{ allow read: if f({}1{}); }}",
            "g(".repeat(200),
            ")".repeat(200)
        ),
        format!(
            "match /a {{ allow read: if get(/a/$({}1{})); }}",
            "get(/b/$(".repeat(100),
            "))".repeat(100)
        ),
    ];
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            for text in cases {
                let err = Ruleset::parse(&text).unwrap_err();
                assert!(err.message().contains("nesting"), "{err}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
