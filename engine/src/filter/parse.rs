//! The filter language: JSON in the shapes users know from MongoDB and
//! Chroma, parsed into a small tree that the index evaluates.
//!
//! ```text
//!  {"year": {"$gte": 2020, "$lt": 2024}, "$or": [{"tag": "news"}, {"lang": {"$in": ["en", "de"]}}]}
//!      └── And ── Cond(year $gte 2020)
//!              ├─ Cond(year $lt 2024)
//!              └─ Or ── Cond(tag $eq "news")
//!                    └─ Cond(lang $in ["en", "de"])
//! ```

use std::fmt;

use serde_json::Value;

use super::{FieldKind, FilterError, FilterSchema};

/// Nesting deeper than this is refused: a filter is written by a person or
/// a program for one query, and a bound keeps evaluation's recursion (and
/// its stack) small whatever a client sends.
pub const MAX_DEPTH: usize = 32;

/// More terms than this are refused, so one request cannot make a node
/// evaluate an unbounded amount of work. A term is an operator (`$eq`,
/// `$gt`, `$and`, …, and the shorthand `{"field": value}`) or one value of
/// an `$in`/`$nin` list.
pub const MAX_TERMS: usize = 1024;

/// A parsed, size-bounded filter. Parse it once per request with
/// [`Filter::parse`], check it against a segment's fields with
/// [`Filter::check`], and turn it into the matching documents with
/// [`FilterIndex::evaluate`](super::FilterIndex::evaluate).
///
/// The tree is private so that the language can grow (new operators,
/// rewrites such as merging ranges) without breaking callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub(super) root: Node,
}

/// One node of a parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    /// Every document (the empty filter `{}`).
    All,
    And(Vec<Node>),
    Or(Vec<Node>),
    /// The complement over all documents of the segment.
    Not(Box<Node>),
    Cond {
        field: String,
        cond: Cond,
    },
}

/// A condition on one field.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cond {
    /// The field equals the value (a keyword array: contains it).
    Eq(Scalar),
    /// Not `Eq`; also true where the field is missing.
    Ne(Scalar),
    /// `Eq` for any of the values.
    In(Vec<Scalar>),
    /// Not `In`; also true where the field is missing.
    Nin(Vec<Scalar>),
    /// A numeric comparison with a finite bound.
    Cmp(CmpOp, f64),
    Exists(bool),
}

impl Cond {
    /// The operator's name, for messages.
    pub(super) fn op(&self) -> &'static str {
        match self {
            Cond::Eq(_) => "$eq",
            Cond::Ne(_) => "$ne",
            Cond::In(_) => "$in",
            Cond::Nin(_) => "$nin",
            Cond::Cmp(op, _) => op.name(),
            Cond::Exists(_) => "$exists",
        }
    }
}

/// A value compared with a field: a keyword or a finite number.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Str(String),
    /// Finite, and never `-0.0` (normalized to `0.0`, as the index stores it).
    Num(f64),
}

impl Scalar {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "string",
            Scalar::Num(_) => "number",
        }
    }
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    fn name(self) -> &'static str {
        match self {
            CmpOp::Gt => "$gt",
            CmpOp::Gte => "$gte",
            CmpOp::Lt => "$lt",
            CmpOp::Lte => "$lte",
        }
    }
}

/// A JSON value's type, for messages.
pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `-0.0` compares equal to `0.0`; storing one spelling keeps the sorted
/// numeric columns and the equality lookups in agreement.
pub(super) fn normalize(x: f64) -> f64 {
    x + 0.0
}

impl Filter {
    /// Does one document's payload match? The same answer as
    /// [`FilterIndex::evaluate`](super::FilterIndex::evaluate) gives for
    /// it, computed from the payload itself: for documents not in a
    /// segment's index (a shard's mutable part). Check the filter against
    /// the schema first, as `evaluate` does.
    pub fn matches(&self, payload: &serde_json::Map<String, Value>) -> bool {
        node_matches(&self.root, payload)
    }

    /// Parses a filter.
    ///
    /// Shapes (nested arbitrarily, up to [`MAX_DEPTH`] and [`MAX_TERMS`]):
    /// `{"f": v}` and `{"f": {"$eq": v}}` (for a keyword field holding
    /// arrays: the array contains `v`), `$ne`, `$in`, `$nin`, `$gt`,
    /// `$gte`, `$lt`, `$lte` (numbers only), `$exists: true|false`,
    /// `{"$and": [..]}`, `{"$or": [..]}`, `{"$not": {..}}` (also on a field:
    /// `{"f": {"$not": {"$gt": 1}}}`). Several keys in one object, or
    /// several operators on one field, are ANDed. As in MongoDB, `$ne`,
    /// `$nin` and `$not` also match documents that lack the field. `{}`
    /// matches every document. Values are strings or finite numbers.
    pub fn parse(json: &Value) -> Result<Filter, FilterError> {
        let mut terms = 0;
        let root = parse_object(json, "filter", 1, &mut terms)?;
        Ok(Filter { root })
    }

    /// Checks that every field the filter names is indexed and that each
    /// operator suits the field's kind (a string for a keyword field, a
    /// number for a numeric one, ranges on numeric fields only). A field
    /// no document of the segment holds ([`FieldKind::Empty`]) accepts
    /// anything (and matches as if every document lacked it).
    pub fn check(&self, schema: &FilterSchema) -> Result<(), FilterError> {
        self.check_with(&|f| schema.get(f), &|| {
            schema.names().collect::<Vec<_>>().join(", ")
        })
    }

    /// [`Filter::check`] with the schema as lookups, so an index checks a
    /// filter without building a [`FilterSchema`] per query; `indexed`
    /// lists the fields, for the error message only.
    pub(super) fn check_with(
        &self,
        kind_of: &dyn Fn(&str) -> Option<FieldKind>,
        indexed: &dyn Fn() -> String,
    ) -> Result<(), FilterError> {
        check_node(&self.root, kind_of, indexed)
    }

    /// The distinct fields the filter names, sorted.
    pub fn fields(&self) -> Vec<&str> {
        let mut out = std::collections::BTreeSet::new();
        collect_fields(&self.root, &mut out);
        out.into_iter().collect()
    }
}

impl fmt::Display for Filter {
    /// The filter as canonical JSON (each condition spelled out), for logs
    /// and error reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", to_json(&self.root))
    }
}

fn collect_fields<'a>(node: &'a Node, out: &mut std::collections::BTreeSet<&'a str>) {
    match node {
        Node::All => {}
        Node::And(v) | Node::Or(v) => v.iter().for_each(|n| collect_fields(n, out)),
        Node::Not(n) => collect_fields(n, out),
        Node::Cond { field, .. } => {
            out.insert(field);
        }
    }
}

fn scalar_json(s: &Scalar) -> Value {
    match s {
        Scalar::Str(s) => Value::String(s.clone()),
        Scalar::Num(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
    }
}

fn to_json(node: &Node) -> Value {
    let obj = |k: &str, v: Value| {
        let mut m = serde_json::Map::new();
        m.insert(k.to_string(), v);
        Value::Object(m)
    };
    match node {
        Node::All => Value::Object(serde_json::Map::new()),
        Node::And(v) => obj("$and", Value::Array(v.iter().map(to_json).collect())),
        Node::Or(v) => obj("$or", Value::Array(v.iter().map(to_json).collect())),
        Node::Not(n) => obj("$not", to_json(n)),
        Node::Cond { field, cond } => {
            let arg = match cond {
                Cond::Eq(s) | Cond::Ne(s) => scalar_json(s),
                Cond::In(v) | Cond::Nin(v) => Value::Array(v.iter().map(scalar_json).collect()),
                Cond::Cmp(_, x) => scalar_json(&Scalar::Num(*x)),
                Cond::Exists(b) => Value::Bool(*b),
            };
            obj(field, obj(cond.op(), arg))
        }
    }
}

fn count_term(terms: &mut usize) -> Result<(), FilterError> {
    *terms += 1;
    if *terms > MAX_TERMS {
        return Err(FilterError::TooManyTerms { max: MAX_TERMS });
    }
    Ok(())
}

fn check_depth(depth: usize) -> Result<(), FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooDeep { max: MAX_DEPTH });
    }
    Ok(())
}

/// A filter object: keys are fields or `$and`/`$or`/`$not`; several keys AND.
fn parse_object(
    json: &Value,
    what: &str,
    depth: usize,
    terms: &mut usize,
) -> Result<Node, FilterError> {
    check_depth(depth)?;
    let Value::Object(map) = json else {
        return Err(FilterError::NotAnObject {
            what: what.to_string(),
            found: json_type(json),
        });
    };
    let mut parts = Vec::with_capacity(map.len());
    for (key, value) in map {
        let node = match key.as_str() {
            "$and" | "$or" => {
                count_term(terms)?;
                let Value::Array(items) = value else {
                    return Err(FilterError::WrongType {
                        field: None,
                        op: key.clone(),
                        expected: "an array of filters",
                        found: json_type(value),
                    });
                };
                if items.is_empty() {
                    return Err(FilterError::EmptyList { op: key.clone() });
                }
                let children = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_object(item, &format!("{key}[{i}]"), depth + 1, terms))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Node::And(children)
                } else {
                    Node::Or(children)
                }
            }
            "$not" => {
                count_term(terms)?;
                Node::Not(Box::new(parse_object(value, "$not", depth + 1, terms)?))
            }
            k if k.starts_with('$') => {
                return Err(FilterError::UnknownOperator {
                    field: None,
                    op: key.clone(),
                })
            }
            field => parse_field(field, value, depth + 1, terms)?,
        };
        parts.push(node);
    }
    Ok(and_of(parts))
}

fn and_of(mut parts: Vec<Node>) -> Node {
    match parts.len() {
        0 => Node::All,
        1 => parts.pop().unwrap_or(Node::All),
        _ => Node::And(parts),
    }
}

/// The value of a field key: a scalar (equality) or an operator object.
fn parse_field(
    field: &str,
    value: &Value,
    depth: usize,
    terms: &mut usize,
) -> Result<Node, FilterError> {
    check_depth(depth)?;
    let Value::Object(ops) = value else {
        count_term(terms)?;
        let s = scalar(field, "$eq", value)?;
        return Ok(cond(field, Cond::Eq(s)));
    };
    if ops.is_empty() {
        return Err(FilterError::NoOperators {
            field: field.to_string(),
        });
    }
    let mut parts = Vec::with_capacity(ops.len());
    for (op, arg) in ops {
        count_term(terms)?;
        let c = match op.as_str() {
            "$eq" => Cond::Eq(scalar(field, op, arg)?),
            "$ne" => Cond::Ne(scalar(field, op, arg)?),
            "$in" | "$nin" => {
                let Value::Array(items) = arg else {
                    return Err(FilterError::WrongType {
                        field: Some(field.to_string()),
                        op: op.clone(),
                        expected: "an array of strings or numbers",
                        found: json_type(arg),
                    });
                };
                let mut values = Vec::with_capacity(items.len().min(MAX_TERMS));
                for item in items {
                    count_term(terms)?;
                    values.push(scalar(field, op, item)?);
                }
                if op == "$in" {
                    Cond::In(values)
                } else {
                    Cond::Nin(values)
                }
            }
            "$gt" => Cond::Cmp(CmpOp::Gt, number(field, op, arg)?),
            "$gte" => Cond::Cmp(CmpOp::Gte, number(field, op, arg)?),
            "$lt" => Cond::Cmp(CmpOp::Lt, number(field, op, arg)?),
            "$lte" => Cond::Cmp(CmpOp::Lte, number(field, op, arg)?),
            "$exists" => match arg {
                Value::Bool(b) => Cond::Exists(*b),
                other => {
                    return Err(FilterError::WrongType {
                        field: Some(field.to_string()),
                        op: op.clone(),
                        expected: "true or false",
                        found: json_type(other),
                    })
                }
            },
            "$not" => {
                if !matches!(arg, Value::Object(_)) {
                    return Err(FilterError::WrongType {
                        field: Some(field.to_string()),
                        op: op.clone(),
                        expected: "an object of operators",
                        found: json_type(arg),
                    });
                }
                parts.push(Node::Not(Box::new(parse_field(
                    field,
                    arg,
                    depth + 1,
                    terms,
                )?)));
                continue;
            }
            _ => {
                return Err(FilterError::UnknownOperator {
                    field: Some(field.to_string()),
                    op: op.clone(),
                })
            }
        };
        parts.push(cond(field, c));
    }
    Ok(and_of(parts))
}

fn cond(field: &str, cond: Cond) -> Node {
    Node::Cond {
        field: field.to_string(),
        cond,
    }
}

fn scalar(field: &str, op: &str, v: &Value) -> Result<Scalar, FilterError> {
    match v {
        Value::String(s) => Ok(Scalar::Str(s.clone())),
        Value::Number(_) => Ok(Scalar::Num(number(field, op, v)?)),
        other => Err(FilterError::WrongType {
            field: Some(field.to_string()),
            op: op.to_string(),
            expected: "a string or a number",
            found: json_type(other),
        }),
    }
}

fn number(field: &str, op: &str, v: &Value) -> Result<f64, FilterError> {
    let x = match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match x {
        Some(x) if x.is_finite() => Ok(normalize(x)),
        Some(_) => Err(FilterError::WrongType {
            field: Some(field.to_string()),
            op: op.to_string(),
            expected: "a finite number",
            found: "non-finite number",
        }),
        None => Err(FilterError::WrongType {
            field: Some(field.to_string()),
            op: op.to_string(),
            expected: "a number",
            found: json_type(v),
        }),
    }
}

fn check_node(
    node: &Node,
    kind_of: &dyn Fn(&str) -> Option<FieldKind>,
    indexed: &dyn Fn() -> String,
) -> Result<(), FilterError> {
    match node {
        Node::All => Ok(()),
        Node::And(v) | Node::Or(v) => v.iter().try_for_each(|n| check_node(n, kind_of, indexed)),
        Node::Not(n) => check_node(n, kind_of, indexed),
        Node::Cond { field, cond } => {
            let kind = kind_of(field).ok_or_else(|| FilterError::NotIndexed {
                field: field.clone(),
                indexed: indexed(),
            })?;
            check_cond(field, cond, kind)
        }
    }
}

fn check_cond(field: &str, cond: &Cond, kind: FieldKind) -> Result<(), FilterError> {
    let want = match kind {
        FieldKind::Keyword => "string",
        FieldKind::Numeric => "number",
        FieldKind::Empty => return Ok(()),
    };
    let mismatch = |found: &'static str| FilterError::KindMismatch {
        field: field.to_string(),
        kind: kind.name(),
        op: cond.op(),
        found,
    };
    match cond {
        Cond::Eq(s) | Cond::Ne(s) => {
            if s.type_name() != want {
                return Err(mismatch(s.type_name()));
            }
        }
        Cond::In(v) | Cond::Nin(v) => {
            if let Some(bad) = v.iter().find(|s| s.type_name() != want) {
                return Err(mismatch(bad.type_name()));
            }
        }
        Cond::Cmp(..) => {
            if kind != FieldKind::Numeric {
                return Err(mismatch("number"));
            }
        }
        Cond::Exists(_) => {}
    }
    Ok(())
}

fn node_matches(node: &Node, payload: &serde_json::Map<String, Value>) -> bool {
    match node {
        Node::All => true,
        Node::And(children) => children.iter().all(|c| node_matches(c, payload)),
        Node::Or(children) => children.iter().any(|c| node_matches(c, payload)),
        Node::Not(inner) => !node_matches(inner, payload),
        Node::Cond { field, cond } => {
            let value = payload.get(field).filter(|v| !v.is_null());
            match cond {
                Cond::Eq(s) => value_eq(value, s),
                Cond::Ne(s) => !value_eq(value, s),
                Cond::In(values) => values.iter().any(|s| value_eq(value, s)),
                Cond::Nin(values) => !values.iter().any(|s| value_eq(value, s)),
                Cond::Cmp(op, bound) => match value.and_then(Value::as_f64) {
                    Some(x) => {
                        let x = normalize(x);
                        match op {
                            CmpOp::Gt => x > *bound,
                            CmpOp::Gte => x >= *bound,
                            CmpOp::Lt => x < *bound,
                            CmpOp::Lte => x <= *bound,
                        }
                    }
                    None => false,
                },
                Cond::Exists(want) => value.is_some() == *want,
            }
        }
    }
}

/// A field's value equals a scalar: a keyword, or a keyword array holding
/// it; or the same number.
fn value_eq(value: Option<&Value>, s: &Scalar) -> bool {
    match (value, s) {
        (Some(Value::String(v)), Scalar::Str(s)) => v == s,
        (Some(Value::Array(items)), Scalar::Str(s)) => {
            items.iter().any(|i| i.as_str() == Some(s.as_str()))
        }
        (Some(Value::Number(n)), Scalar::Num(x)) => n.as_f64().map(normalize) == Some(*x),
        _ => false,
    }
}
