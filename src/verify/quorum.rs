//! Agreement among independent operators: answers compared as JSON values (so key
//! order and whitespace do not matter), each operator voting once.

use std::collections::HashSet;

use serde_json::Value;

/// The value at least `quorum` distinct operators gave, if any, and the operators that
/// gave something else (the dissenters, to be treated as liars once a quorum stands).
pub fn agree<'a>(answers: &[(&'a str, Value)], quorum: usize) -> Option<(Value, Vec<&'a str>)> {
    let mut groups: Vec<(Value, HashSet<&'a str>)> = Vec::new();
    for (operator, value) in answers {
        match groups.iter_mut().find(|(v, _)| v == value) {
            Some((_, ops)) => {
                ops.insert(operator);
            }
            None => groups.push((value.clone(), HashSet::from([*operator]))),
        }
    }
    let (value, ops) = groups.iter().find(|(_, ops)| ops.len() >= quorum.max(1))?;
    let dissenters = answers
        .iter()
        .filter(|(op, v)| v != value && !ops.contains(op))
        .map(|(op, _)| *op)
        .collect();
    Some((value.clone(), dissenters))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_quorum_of_distinct_operators_decides_and_names_dissenters() {
        let answers = [
            ("a", json!({"x": 1, "y": 2})),
            ("b", json!({"y": 2, "x": 1})),
            ("c", json!("0x0")),
        ];
        let (value, dissent) = agree(&answers, 2).expect("a and b agree");
        assert_eq!(value, json!({"x": 1, "y": 2}));
        assert_eq!(dissent, ["c"]);
        // One operator twice is one vote.
        assert!(agree(&[("a", json!(1)), ("a", json!(1)), ("b", json!(2))], 2).is_none());
    }
}
