//! Tests of the filter module: semantics on a worked example, every error
//! message, a property test against a naive oracle that evaluates the
//! filter on each payload, the file round trip and its corruption, and the
//! committed golden file.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::layout::FILTERS_FILE;

fn fields(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn build(names: &[&str], payloads: &[Value]) -> FilterIndex {
    let mut b = FilterIndexBuilder::new(&fields(names)).unwrap();
    for (doc, p) in payloads.iter().enumerate() {
        b.add(doc as u32, p.as_object().unwrap()).unwrap();
    }
    b.finish()
}

fn ids(b: &RoaringBitmap) -> Vec<u32> {
    b.iter().collect()
}

fn example() -> FilterIndex {
    build(
        &["tag", "lang", "year", "ghost"],
        &[
            json!({"tag": ["a", "b"], "lang": "en", "year": 2020}),
            json!({"tag": "a", "year": 2021.5, "other": true}),
            json!({"tag": [], "lang": "de"}),
            json!({"lang": "en", "year": 2019, "tag": null}),
            json!({}),
        ],
    )
}

fn eval(index: &FilterIndex, filter: Value) -> Vec<u32> {
    ids(&index.evaluate(&Filter::parse(&filter).unwrap()).unwrap())
}

#[test]
fn semantics_on_a_worked_example() {
    let x = example();
    assert_eq!(x.num_docs(), 5);
    assert_eq!(
        x.schema().iter().collect::<Vec<_>>(),
        vec![
            ("ghost", FieldKind::Empty),
            ("lang", FieldKind::Keyword),
            ("tag", FieldKind::Keyword),
            ("year", FieldKind::Numeric),
        ]
    );
    assert_eq!(eval(&x, json!({})), vec![0, 1, 2, 3, 4]);
    // An array matches when it contains the value.
    assert_eq!(eval(&x, json!({"tag": "a"})), vec![0, 1]);
    assert_eq!(eval(&x, json!({"tag": {"$eq": "b"}})), vec![0]);
    // $ne and $nin also match documents without the field (null = absent).
    assert_eq!(eval(&x, json!({"tag": {"$ne": "a"}})), vec![2, 3, 4]);
    assert_eq!(eval(&x, json!({"lang": {"$nin": ["en"]}})), vec![1, 2, 4]);
    // An empty array is present.
    assert_eq!(eval(&x, json!({"tag": {"$exists": true}})), vec![0, 1, 2]);
    assert_eq!(eval(&x, json!({"tag": {"$exists": false}})), vec![3, 4]);
    // Several operators on one field AND.
    assert_eq!(
        eval(&x, json!({"year": {"$gte": 2020, "$lt": 2022}})),
        vec![0, 1]
    );
    assert_eq!(eval(&x, json!({"year": {"$gt": 2020}})), vec![1]);
    assert_eq!(eval(&x, json!({"year": {"$lte": 2020}})), vec![0, 3]);
    assert_eq!(eval(&x, json!({"year": 2021.5})), vec![1]);
    assert_eq!(eval(&x, json!({"year": {"$in": [2019, 2020]}})), vec![0, 3]);
    // $not is the complement over all documents, on a field as at the top.
    assert_eq!(eval(&x, json!({"$not": {"lang": "en"}})), vec![1, 2, 4]);
    assert_eq!(
        eval(&x, json!({"year": {"$not": {"$gt": 2020}}})),
        vec![0, 2, 3, 4]
    );
    // Several keys AND; $and / $or nest.
    assert_eq!(
        eval(&x, json!({"tag": {"$in": ["b", "c"]}, "lang": "en"})),
        vec![0]
    );
    assert_eq!(
        eval(
            &x,
            json!({"$or": [{"lang": "de"}, {"$and": [{"year": {"$gt": 2000}}, {"tag": {"$exists": false}}]}]})
        ),
        vec![2, 3]
    );
    // A field no document holds: accepts any comparison, behaves as absent.
    assert_eq!(eval(&x, json!({"ghost": "x"})), Vec::<u32>::new());
    assert_eq!(eval(&x, json!({"ghost": {"$gt": 1}})), Vec::<u32>::new());
    assert_eq!(eval(&x, json!({"ghost": {"$ne": 1}})), vec![0, 1, 2, 3, 4]);
    assert!(x.memory_bytes() > 0);
}

/// Comparisons on one field under `$and` are evaluated as one interval;
/// the answers are those of each comparison intersected.
#[test]
fn ranges_on_one_field_combine() {
    let x = example();
    let r = |f: Value| eval(&x, f);
    assert_eq!(r(json!({"year": {"$gte": 2020, "$lt": 2021.5}})), vec![0]);
    assert_eq!(
        r(json!({"year": {"$gt": 2019, "$lte": 2021.5}})),
        vec![0, 1]
    );
    assert_eq!(
        r(json!({"year": {"$gte": 2021, "$lt": 2020}})),
        Vec::<u32>::new()
    );
    assert_eq!(
        r(json!({"$and": [{"year": {"$gte": 2019}}, {"lang": "en"}, {"year": {"$lt": 2020}}]})),
        vec![3]
    );
    assert_eq!(
        r(json!({"$and": [{"lang": "en"}, {"year": {"$lte": 2020}}]})),
        vec![0, 3]
    );
}

/// The filter shapes that confine their matches to a run of a field's
/// order, and those that do not.
#[test]
fn spans_of_the_shapes_users_write() {
    let index = example();
    let tag = index.field_order("tag").unwrap();
    let year = index.field_order("year").unwrap();
    // Posting lists in value order: a → 0, 1; b → 0.
    assert_eq!(tag.docs(), &[0, 1, 0]);
    assert_eq!(year.docs(), &[3, 0, 1]);
    let span = |order: &FieldOrder, f: Value| index.span(order, &Filter::parse(&f).unwrap());
    let s = |lo, hi, exact| Some(Span { lo, hi, exact });
    assert_eq!(span(&tag, json!({"tag": "a"})), s(0, 2, true));
    assert_eq!(span(&tag, json!({"tag": "b"})), s(2, 3, true));
    assert_eq!(span(&tag, json!({"tag": "nope"})), s(0, 0, true));
    assert_eq!(span(&year, json!({"year": {"$gte": 2020}})), s(1, 3, true));
    assert_eq!(
        span(&year, json!({"year": {"$gt": 2019, "$lt": 2021}})),
        s(1, 2, true)
    );
    assert_eq!(span(&year, json!({"year": 2019})), s(0, 1, true));
    // An $and: the field's run, checked against the rest.
    let both = json!({"$and": [{"tag": "a"}, {"year": {"$lt": 2021}}]});
    assert_eq!(span(&tag, both.clone()), s(0, 2, false));
    assert_eq!(span(&year, both), s(0, 2, false));
    assert_eq!(
        span(&tag, json!({"tag": "a", "lang": "en"})),
        s(0, 2, false)
    );
    // Two keywords of one field: a document may hold both, so one run, checked.
    assert_eq!(
        span(&tag, json!({"$and": [{"tag": "a"}, {"tag": "b"}]})),
        s(2, 3, false)
    );
    // Shapes a run cannot hold: an $or, a negation, another field only.
    assert_eq!(
        span(&tag, json!({"$or": [{"tag": "a"}, {"tag": "b"}]})),
        None
    );
    assert_eq!(span(&tag, json!({"tag": {"$ne": "a"}})), None);
    assert_eq!(span(&tag, json!({"lang": "en"})), None);
    assert_eq!(span(&year, json!({})), None);
    // Only indexed fields that some document holds have an order.
    assert!(index.field_order("ghost").is_err());
    let err = index.field_order("nope").unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn display_is_canonical_json_that_parses_back() {
    let f = Filter::parse(&json!({"year": {"$gte": 2020, "$lt": 2024}, "tag": "a"})).unwrap();
    assert_eq!(f.fields(), vec!["tag", "year"]);
    let again = Filter::parse(&serde_json::from_str(&f.to_string()).unwrap()).unwrap();
    assert_eq!(again, f);
}

fn err_of(filter: Value) -> String {
    let x = example();
    match Filter::parse(&filter) {
        Err(e) => e.to_string(),
        Ok(f) => x.evaluate(&f).unwrap_err().to_string(),
    }
}

#[test]
fn filter_errors_name_the_field_and_the_operator() {
    let cases = [
        (json!([1, 2]), "filter must be a JSON object, got array"),
        (json!({"$foo": 1}), "unknown operator \"$foo\""),
        (
            json!({"year": {"$foo": 1}}),
            "unknown operator \"$foo\" on field \"year\"",
        ),
        (
            json!({"year": {"$gt": "x"}}),
            "$gt on field \"year\" needs a number, got string",
        ),
        (
            json!({"tag": {"$in": "a"}}),
            "$in on field \"tag\" needs an array of strings or numbers, got string",
        ),
        (
            json!({"tag": {"$nin": [["a"]]}}),
            "$nin on field \"tag\" needs a string or a number, got array",
        ),
        (
            json!({"tag": {"$exists": 1}}),
            "$exists on field \"tag\" needs true or false, got number",
        ),
        (json!({"$and": []}), "$and needs at least one filter"),
        (json!({"$or": []}), "$or needs at least one filter"),
        (
            json!({"$or": {}}),
            "$or needs an array of filters, got object",
        ),
        (
            json!({"$and": [1]}),
            "$and[0] must be a JSON object, got number",
        ),
        (
            json!({"$not": [1]}),
            "$not must be a JSON object, got array",
        ),
        (
            json!({"tag": {"$not": 1}}),
            "$not on field \"tag\" needs an object of operators, got number",
        ),
        (json!({"tag": {}}), "field \"tag\": empty operator object"),
        (
            json!({"tag": null}),
            "$eq on field \"tag\" needs a string or a number, got null",
        ),
        (
            json!({"tag": true}),
            "$eq on field \"tag\" needs a string or a number, got boolean",
        ),
        (json!({"nope": "x"}), "field \"nope\" is not indexed"),
        (
            json!({"tag": 3}),
            "field \"tag\" is a keyword field; $eq compares it with a number",
        ),
        (
            json!({"year": "x"}),
            "field \"year\" is a numeric field; $eq compares it with a string",
        ),
        (
            json!({"tag": {"$gt": 1}}),
            "field \"tag\" is a keyword field; $gt compares it with a number",
        ),
        (
            json!({"year": {"$in": [2020, "x"]}}),
            "field \"year\" is a numeric field; $in compares it with a string",
        ),
        (
            json!({"$or": [{"lang": "en"}, {"year": {"$ne": "x"}}]}),
            "field \"year\" is a numeric field; $ne compares it with a string",
        ),
    ];
    for (filter, want) in cases {
        let got = err_of(filter.clone());
        assert!(got.contains(want), "{filter}: got {got:?}, want {want:?}");
    }
    let nf = Filter::parse(&json!({"nope": 1})).unwrap();
    assert!(matches!(
        nf.check(&example().schema()),
        Err(FilterError::NotIndexed { .. })
    ));
}

#[test]
fn limits_are_errors_that_name_the_limit() {
    let mut deep = json!({"tag": "a"});
    for _ in 0..MAX_DEPTH {
        deep = json!({ "$not": deep });
    }
    assert_eq!(
        Filter::parse(&deep).unwrap_err(),
        FilterError::TooDeep { max: MAX_DEPTH }
    );
    assert!(err_of(deep).contains("deeper than 32 levels"));
    let mut ok = json!({"tag": "a"});
    for _ in 0..MAX_DEPTH - 2 {
        ok = json!({ "$not": ok });
    }
    assert!(Filter::parse(&ok).is_ok());

    let many: Vec<Value> = (0..MAX_TERMS).map(|i| json!(format!("v{i}"))).collect();
    let e = err_of(json!({"tag": {"$in": many}}));
    assert!(e.contains("more than 1024 terms"), "{e}");
    let fits: Vec<Value> = (0..MAX_TERMS - 1).map(|i| json!(format!("v{i}"))).collect();
    assert!(Filter::parse(&json!({"tag": {"$in": fits}})).is_ok());
}

#[test]
fn builder_errors_name_the_document_and_the_field() {
    let add_all = |payloads: &[Value]| -> Result<(), FilterError> {
        let mut b = FilterIndexBuilder::new(&fields(&["tag", "year"])).unwrap();
        for (doc, p) in payloads.iter().enumerate() {
            b.add(doc as u32, p.as_object().unwrap())?;
        }
        Ok(())
    };
    let cases = [
        (
            vec![json!({"year": 2020}), json!({"year": "x"})],
            "document 1: field \"year\" holds a string or an array of strings, but document 0 made it a numeric field",
        ),
        (
            vec![json!({}), json!({"tag": ["a"]}), json!({"tag": 1})],
            "document 2: field \"tag\" holds a number, but document 1 made it a keyword field",
        ),
        (
            vec![json!({"year": 1}), json!({"year": []})],
            "document 1: field \"year\" holds a string or an array of strings, but document 0 made it a numeric field",
        ),
        (
            vec![json!({"tag": true})],
            "document 0: field \"tag\" holds a boolean",
        ),
        (
            vec![json!({"tag": {"a": 1}})],
            "document 0: field \"tag\" holds an object",
        ),
        (
            vec![json!({"tag": ["a", 2]})],
            "document 0: field \"tag\" holds an array holding a number",
        ),
        (
            vec![json!({"tag": "x".repeat(MAX_KEYWORD_BYTES + 1)})],
            "document 0: field \"tag\" holds a string of 65537 bytes",
        ),
    ];
    for (payloads, want) in cases {
        let got = add_all(&payloads).unwrap_err().to_string();
        assert!(got.contains(want), "got {got:?}, want {want:?}");
    }

    let bad_names = [
        (fields(&["a", "a"]), "field \"a\" is listed twice"),
        (fields(&[""]), "cannot index field \"\": the name is empty"),
        (fields(&["$x"]), "cannot index field \"$x\""),
    ];
    for (names, want) in bad_names {
        let got = FilterIndexBuilder::new(&names).unwrap_err().to_string();
        assert!(got.contains(want), "got {got:?}, want {want:?}");
    }

    let mut b = FilterIndexBuilder::new(&fields(&["tag"])).unwrap();
    let e = b.add(1, &Map::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "document 1 added out of order: the next document is 0"
    );
}

#[test]
fn a_refused_document_leaves_the_builder_unchanged() {
    let mut b = FilterIndexBuilder::new(&fields(&["tag", "year"])).unwrap();
    b.add(0, json!({"year": 1}).as_object().unwrap()).unwrap();
    let bad = json!({"tag": "a", "year": "x"});
    assert!(b.add(1, bad.as_object().unwrap()).is_err());
    assert_eq!(b.num_docs(), 1);
    b.add(1, json!({"tag": "b"}).as_object().unwrap()).unwrap();
    let x = b.finish();
    assert_eq!(eval(&x, json!({"tag": "a"})), Vec::<u32>::new());
    assert_eq!(eval(&x, json!({"tag": {"$exists": true}})), vec![1]);
}

// ---------------------------------------------------------------------------
// The oracle: random payloads, random filters rendered to JSON, evaluated by
// the index and directly on each payload.

const FIELDS: [&str; 4] = ["tag", "lang", "year", "ghost"];
const TAGS: [&str; 5] = ["a", "b", "c", "d", "zz"];
const LANGS: [&str; 4] = ["en", "de", "fr", "zz"];
const YEARS: [f64; 9] = [
    -1.5, 0.0, 2017.0, 2018.0, 2020.0, 2020.5, 2022.0, 2025.0, 2026.0,
];

/// A value compared with a field.
#[derive(Debug, Clone)]
enum TS {
    S(&'static str),
    N(f64),
}

/// One operator on a field.
#[derive(Debug, Clone)]
enum TOp {
    Eq(TS),
    Ne(TS),
    In(Vec<TS>),
    Nin(Vec<TS>),
    Cmp(&'static str, f64),
    Exists(bool),
    Not(Vec<TOp>),
}

impl TOp {
    fn name(&self) -> &'static str {
        match self {
            TOp::Eq(_) => "$eq",
            TOp::Ne(_) => "$ne",
            TOp::In(_) => "$in",
            TOp::Nin(_) => "$nin",
            TOp::Cmp(op, _) => op,
            TOp::Exists(_) => "$exists",
            TOp::Not(_) => "$not",
        }
    }
}

/// The value of one key of a filter object.
#[derive(Debug, Clone)]
enum TV {
    Short(TS),
    Ops(Vec<TOp>),
    And(Vec<TF>),
    Or(Vec<TF>),
    Not(Box<TF>),
}

/// A filter object: keys (distinct) and their values.
#[derive(Debug, Clone)]
struct TF(Vec<(&'static str, TV)>);

fn dedup_by<T>(items: Vec<T>, key: impl Fn(&T) -> &'static str) -> Vec<T> {
    let mut seen = std::collections::BTreeSet::new();
    items.into_iter().filter(|t| seen.insert(key(t))).collect()
}

fn ts_json(s: &TS) -> Value {
    match s {
        TS::S(s) => json!(s),
        // Integral values as JSON integers, to exercise both number forms.
        TS::N(x) if x.fract() == 0.0 => json!(*x as i64),
        TS::N(x) => json!(x),
    }
}

fn op_json(ops: &[TOp]) -> Value {
    let mut m = Map::new();
    for op in ops {
        let arg = match op {
            TOp::Eq(s) | TOp::Ne(s) => ts_json(s),
            TOp::In(v) | TOp::Nin(v) => Value::Array(v.iter().map(ts_json).collect()),
            TOp::Cmp(_, x) => ts_json(&TS::N(*x)),
            TOp::Exists(b) => json!(b),
            TOp::Not(inner) => op_json(inner),
        };
        m.insert(op.name().to_string(), arg);
    }
    Value::Object(m)
}

fn tf_json(f: &TF) -> Value {
    let mut m = Map::new();
    for (key, v) in &f.0 {
        let value = match v {
            TV::Short(s) => ts_json(s),
            TV::Ops(ops) => op_json(ops),
            TV::And(v) | TV::Or(v) => Value::Array(v.iter().map(tf_json).collect()),
            TV::Not(f) => tf_json(f),
        };
        m.insert(key.to_string(), value);
    }
    Value::Object(m)
}

/// Equality as MongoDB defines it on these types: a string equals a string
/// or is contained in an array; a number equals a number.
fn oracle_eq(value: Option<&Value>, s: &TS) -> bool {
    match (value, s) {
        (Some(Value::String(v)), TS::S(s)) => v == s,
        (Some(Value::Array(a)), TS::S(s)) => a.iter().any(|v| v == s),
        (Some(Value::Number(n)), TS::N(x)) => n.as_f64().unwrap() == *x,
        _ => false,
    }
}

fn oracle_op(value: Option<&Value>, op: &TOp) -> bool {
    let num = value.and_then(Value::as_f64);
    match op {
        TOp::Eq(s) => oracle_eq(value, s),
        TOp::Ne(s) => !oracle_eq(value, s),
        TOp::In(v) => v.iter().any(|s| oracle_eq(value, s)),
        TOp::Nin(v) => !v.iter().any(|s| oracle_eq(value, s)),
        TOp::Cmp(op, x) => num.is_some_and(|n| match *op {
            "$gt" => n > *x,
            "$gte" => n >= *x,
            "$lt" => n < *x,
            _ => n <= *x,
        }),
        TOp::Exists(b) => value.is_some() == *b,
        TOp::Not(inner) => !inner.iter().all(|op| oracle_op(value, op)),
    }
}

/// A payload's value for a field; `null` counts as absent.
fn present<'a>(payload: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    payload.get(key).filter(|v| !v.is_null())
}

fn oracle(f: &TF, payload: &Map<String, Value>) -> bool {
    f.0.iter().all(|(key, v)| match v {
        TV::And(fs) => fs.iter().all(|f| oracle(f, payload)),
        TV::Or(fs) => fs.iter().any(|f| oracle(f, payload)),
        TV::Not(f) => !oracle(f, payload),
        TV::Short(s) => oracle_eq(present(payload, key), s),
        TV::Ops(ops) => ops.iter().all(|op| oracle_op(present(payload, key), op)),
    })
}

fn arb_ts(field: &'static str) -> BoxedStrategy<TS> {
    match field {
        "tag" => prop::sample::select(&TAGS[..]).prop_map(TS::S).boxed(),
        "lang" => prop::sample::select(&LANGS[..]).prop_map(TS::S).boxed(),
        "year" => prop::sample::select(&YEARS[..]).prop_map(TS::N).boxed(),
        _ => prop_oneof![
            prop::sample::select(&TAGS[..]).prop_map(TS::S),
            prop::sample::select(&YEARS[..]).prop_map(TS::N),
        ]
        .boxed(),
    }
}

fn arb_op(field: &'static str) -> BoxedStrategy<TOp> {
    let ts = arb_ts(field);
    let basic = prop_oneof![
        ts.clone().prop_map(TOp::Eq),
        ts.clone().prop_map(TOp::Ne),
        prop::collection::vec(ts.clone(), 0..4).prop_map(TOp::In),
        prop::collection::vec(ts, 0..4).prop_map(TOp::Nin),
        any::<bool>().prop_map(TOp::Exists),
    ];
    let leaf = if field == "year" || field == "ghost" {
        let cmp = (
            prop::sample::select(&["$gt", "$gte", "$lt", "$lte"][..]),
            prop::sample::select(&YEARS[..]),
        )
            .prop_map(|(op, x)| TOp::Cmp(op, x));
        prop_oneof![3 => basic, 2 => cmp].boxed()
    } else {
        basic.boxed()
    };
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop::collection::vec(inner, 1..3).prop_map(|v| TOp::Not(dedup_by(v, TOp::name)))
    })
    .boxed()
}

fn arb_field_entry() -> BoxedStrategy<(&'static str, TV)> {
    prop::sample::select(&FIELDS[..])
        .prop_flat_map(|f| {
            prop_oneof![
                arb_ts(f).prop_map(TV::Short),
                prop::collection::vec(arb_op(f), 1..4)
                    .prop_map(|v| TV::Ops(dedup_by(v, TOp::name))),
            ]
            .prop_map(move |v| (f, v))
        })
        .boxed()
}

fn arb_filter() -> BoxedStrategy<TF> {
    let leaf = prop::collection::vec(arb_field_entry(), 0..3)
        .prop_map(|v| TF(dedup_by(v, |e| e.0)))
        .boxed();
    leaf.prop_recursive(4, 40, 3, |inner| {
        let entry = prop_oneof![
            2 => arb_field_entry(),
            1 => prop::collection::vec(inner.clone(), 1..3).prop_map(|v| ("$and", TV::And(v))),
            1 => prop::collection::vec(inner.clone(), 1..3).prop_map(|v| ("$or", TV::Or(v))),
            1 => inner.prop_map(|f| ("$not", TV::Not(Box::new(f)))),
        ];
        prop::collection::vec(entry, 1..4).prop_map(|v| TF(dedup_by(v, |e| e.0)))
    })
    .boxed()
}

fn arb_payload() -> impl Strategy<Value = Value> {
    let tag = prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => prop::sample::select(&TAGS[..4]).prop_map(|s| Some(json!(s))),
        3 => prop::collection::vec(prop::sample::select(&TAGS[..4]), 0..4).prop_map(|v| Some(json!(v))),
    ];
    let lang = prop::option::of(prop::sample::select(&LANGS[..3]).prop_map(|s| json!(s)));
    let year = prop::option::of(prop_oneof![
        prop::sample::select(&[2018i64, 2019, 2020, 2021, 2024, 0][..]).prop_map(|y| json!(y)),
        prop::sample::select(&[-1.5f64, 2020.5, -0.0][..]).prop_map(|y| json!(y)),
    ]);
    (tag, lang, year, any::<bool>()).prop_map(|(tag, lang, year, other)| {
        let mut m = Map::new();
        for (k, v) in [("tag", tag), ("lang", lang), ("year", year)] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        if other {
            m.insert("other".into(), json!({"not": "indexed"}));
        }
        Value::Object(m)
    })
}

fn build_from(payloads: &[Value]) -> FilterIndex {
    build(&FIELDS, payloads)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn evaluate_equals_the_oracle(
        payloads in prop::collection::vec(arb_payload(), 0..40),
        filters in prop::collection::vec(arb_filter(), 1..6),
    ) {
        let index = build_from(&payloads);
        for tf in &filters {
            let json = tf_json(tf);
            let filter = Filter::parse(&json).unwrap();
            let got = ids(&index.evaluate(&filter).unwrap());
            let want: Vec<u32> = payloads
                .iter()
                .enumerate()
                .filter(|(_, p)| oracle(tf, p.as_object().unwrap()))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(&got, &want, "filter {}", json);
            // One document at a time (a mutable part's), the same answer.
            let one: Vec<u32> = payloads
                .iter()
                .enumerate()
                .filter(|(_, p)| filter.matches(p.as_object().unwrap()))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(&one, &want, "matches() on filter {}", json);
            // The canonical rendering parses back to the same filter.
            let again = Filter::parse(&serde_json::from_str(&filter.to_string()).unwrap()).unwrap();
            prop_assert_eq!(&again, &filter);
        }
    }

    /// A span holds every match of its filter; an exact one holds exactly
    /// the matches, each once. Checked for every field's order.
    #[test]
    fn spans_hold_every_match(
        payloads in prop::collection::vec(arb_payload(), 0..60),
        filters in prop::collection::vec(arb_filter(), 1..6),
    ) {
        let index = build_from(&payloads);
        for field in ["tag", "lang", "year"] {
            let Ok(order) = index.field_order(field) else { continue };
            for tf in &filters {
                let filter = Filter::parse(&tf_json(tf)).unwrap();
                let Some(span) = index.span(&order, &filter) else { continue };
                let matches = index.evaluate(&filter).unwrap();
                let run = &order.docs()[span.lo..span.hi];
                let held: RoaringBitmap = run.iter().copied().collect();
                prop_assert!(matches.is_subset(&held), "{field}: {} {span:?}", tf_json(tf));
                if span.exact {
                    prop_assert_eq!(&held, &matches, "{}: {} exact", field, tf_json(tf));
                    prop_assert_eq!(run.len() as u64, held.len());
                }
            }
        }
    }

    #[test]
    fn file_round_trip_and_any_damage_is_refused(
        payloads in prop::collection::vec(arb_payload(), 0..40),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let index = build_from(&payloads);
        let bytes = index.to_bytes().unwrap();
        prop_assert_eq!(&FilterIndex::from_bytes(&bytes).unwrap(), &index);
        let i = at.index(bytes.len());
        let mut bad = bytes.clone();
        bad[i] ^= 1 << bit;
        prop_assert!(FilterIndex::from_bytes(&bad).is_err());
        prop_assert!(FilterIndex::from_bytes(&bytes[..i]).is_err());
    }

    /// Damage behind a valid checksum (a buggy or hostile writer) reaches
    /// the parser itself: it must refuse or accept, never panic, and what
    /// it accepts must evaluate without panicking.
    #[test]
    fn damage_behind_a_valid_checksum_never_panics(
        payloads in prop::collection::vec(arb_payload(), 1..40),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let index = build_from(&payloads);
        let bytes = index.to_bytes().unwrap();
        let mut body = bytes[..bytes.len() - 8].to_vec();
        let i = at.index(body.len());
        body[i] = byte;
        let refooter = |mut b: Vec<u8>| {
            let sum = xxhash_rust::xxh3::xxh3_64(&b);
            b.extend_from_slice(&sum.to_le_bytes());
            b
        };
        if let Ok(x) = FilterIndex::from_bytes(&refooter(body.clone())) {
            let _ = x.evaluate(&Filter::parse(&json!({"tag": {"$ne": "a"}})).unwrap());
            let _ = x.evaluate(&Filter::parse(&json!({"year": {"$gt": 2019}})).unwrap());
        }
        let cut = cut.index(body.len());
        let _ = FilterIndex::from_bytes(&refooter(body[..cut].to_vec()));
    }
}

#[test]
fn read_refuses_wrong_magic_version_and_counts() {
    let bytes = example().to_bytes().unwrap();
    let refooter = |mut b: Vec<u8>| {
        b.truncate(b.len() - 8);
        let sum = xxhash_rust::xxh3::xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    };
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(
        FilterIndex::from_bytes(&refooter(magic)),
        Err(crate::error::FormatError::BadMagic { .. })
    ));
    let mut major = bytes.clone();
    major[8] = 2;
    assert!(matches!(
        FilterIndex::from_bytes(&refooter(major)),
        Err(crate::error::FormatError::UnsupportedVersion { major: 2, .. })
    ));
    // A minor bump is read.
    let mut minor = bytes.clone();
    minor[10] = 7;
    assert!(FilterIndex::from_bytes(&refooter(minor)).is_ok());
    // A huge field count runs out of bytes, it does not allocate.
    let mut count = bytes.clone();
    count[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        FilterIndex::from_bytes(&refooter(count)),
        Err(crate::error::FormatError::Truncated { .. })
    ));
    // Fewer documents than the bitmaps name.
    let mut docs = bytes.clone();
    docs[12..16].copy_from_slice(&2u32.to_le_bytes());
    let e = FilterIndex::from_bytes(&refooter(docs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("but the segment has 2 documents"), "{e}");
}

#[test]
fn write_and_read_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILTERS_FILE);
    let x = example();
    let size = x.write(&path).unwrap();
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(FilterIndex::read(&path).unwrap(), x);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = FilterIndex::read(&path).unwrap_err().to_string();
    assert!(
        e.contains(FILTERS_FILE) && e.contains("checksum mismatch"),
        "{e}"
    );
}

/// Enough documents for every container kind (array, bitset, run) and for
/// ranges wider than half a numeric column; checked against brute force,
/// and through a file round trip.
#[test]
fn a_large_segment_matches_brute_force() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let n = 150_000u32;
    let payloads: Vec<Value> = (0..n)
        .map(|i| {
            let mut m = Map::new();
            if i % 7 != 0 {
                m.insert("year".into(), json!(rng.random_range(0..1000)));
            }
            if i < 100_000 {
                m.insert("bulk".into(), json!("x"));
            }
            if rng.random_bool(0.3) {
                m.insert("tag".into(), json!(["a", TAGS[rng.random_range(0..4)]]));
            }
            Value::Object(m)
        })
        .collect();
    let built = build(&["year", "bulk", "tag"], &payloads);
    let x = FilterIndex::from_bytes(&built.to_bytes().unwrap()).unwrap();
    assert_eq!(x, built);
    let check = |filter: Value, pred: &dyn Fn(&Map<String, Value>) -> bool| {
        let want: Vec<u32> = (0..n)
            .filter(|&i| pred(payloads[i as usize].as_object().unwrap()))
            .collect();
        assert_eq!(eval(&x, filter.clone()), want, "{filter}");
    };
    let year = |p: &Map<String, Value>| p.get("year").and_then(Value::as_f64);
    check(json!({"year": {"$gte": 100}}), &|p| {
        year(p).is_some_and(|y| y >= 100.0)
    });
    check(json!({"year": {"$lt": 900}}), &|p| {
        year(p).is_some_and(|y| y < 900.0)
    });
    check(json!({"year": {"$gt": 10, "$lte": 20}}), &|p| {
        year(p).is_some_and(|y| y > 10.0 && y <= 20.0)
    });
    check(json!({"year": 500}), &|p| year(p) == Some(500.0));
    check(json!({"year": {"$ne": 500}}), &|p| year(p) != Some(500.0));
    check(json!({"bulk": "x", "tag": "c"}), &|p| {
        p.contains_key("bulk")
            && p.get("tag")
                .is_some_and(|t| t.as_array().unwrap().contains(&json!("c")))
    });
    check(json!({"$not": {"tag": "a"}}), &|p| !p.contains_key("tag"));
}

// ---------------------------------------------------------------------------
// The golden file: written once if missing, never regenerated.

fn golden_payloads() -> Vec<Value> {
    vec![
        json!({"tag": ["news", "sport"], "lang": "en", "year": 2020}),
        json!({"tag": "news", "lang": "de", "year": 2021.5}),
        json!({"tag": [], "year": -3}),
        json!({"lang": "en"}),
        json!({}),
        json!({"tag": ["tech"], "lang": "fr", "year": 2024}),
        json!({"tag": "sport", "lang": null, "year": 2020}),
        json!({"tag": ["news", "tech"], "lang": "en", "year": 0}),
    ]
}

#[test]
fn golden_filters_v1_still_reads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/filters-v1")
        .join(FILTERS_FILE);
    let built = build(&["lang", "tag", "year", "ghost"], &golden_payloads());
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        built.write(&path).unwrap();
        eprintln!(
            "wrote the golden filters file {}: commit it",
            path.display()
        );
    }
    let golden = FilterIndex::read(&path).unwrap();
    assert_eq!(golden.num_docs(), 8);
    assert_eq!(
        golden.schema().iter().collect::<Vec<_>>(),
        vec![
            ("ghost", FieldKind::Empty),
            ("lang", FieldKind::Keyword),
            ("tag", FieldKind::Keyword),
            ("year", FieldKind::Numeric),
        ]
    );
    assert_eq!(eval(&golden, json!({"tag": "news"})), vec![0, 1, 7]);
    assert_eq!(
        eval(&golden, json!({"tag": {"$exists": true}})),
        vec![0, 1, 2, 5, 6, 7]
    );
    assert_eq!(
        eval(&golden, json!({"lang": {"$ne": "en"}})),
        vec![1, 2, 4, 5, 6]
    );
    assert_eq!(
        eval(&golden, json!({"year": {"$gte": 0, "$lt": 2021}})),
        vec![0, 6, 7]
    );
    assert_eq!(eval(&golden, json!({"year": {"$lt": 0}})), vec![2]);
    assert_eq!(
        eval(&golden, json!({"ghost": {"$exists": false}})),
        (0..8).collect::<Vec<_>>()
    );
    // The v1 writer still writes exactly these bytes.
    assert_eq!(golden, built);
    assert_eq!(std::fs::read(&path).unwrap(), built.to_bytes().unwrap());
}
