//! Agreement among independent operators: answers compared as JSON values (so key
//! order and whitespace do not matter), each operator voting once.

use std::collections::HashSet;

use serde_json::Value;

/// The value at least `quorum` distinct operators gave, if any, and the operators that
/// gave something else (the dissenters, to be treated as liars once a quorum stands).
/// Values are borrowed: answers can be large (blocks, logs), and agreement is asked
/// again after every vote.
pub fn agree<'a, 'v>(
    answers: &[(&'a str, &'v Value)],
    quorum: usize,
) -> Option<(&'v Value, Vec<&'a str>)> {
    let mut groups: Vec<(&'v Value, HashSet<&'a str>)> = Vec::new();
    for &(operator, value) in answers {
        match groups.iter_mut().find(|(v, _)| *v == value) {
            Some((_, ops)) => {
                ops.insert(operator);
            }
            None => groups.push((value, HashSet::from([operator]))),
        }
    }
    let (value, ops) = groups.iter().find(|(_, ops)| ops.len() >= quorum.max(1))?;
    let dissenters = answers
        .iter()
        .filter(|(op, v)| v != value && !ops.contains(op))
        .map(|(op, _)| *op)
        .collect();
    Some((value, dissenters))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_quorum_of_distinct_operators_decides_and_names_dissenters() {
        let (x, y, zero) = (
            json!({"x": 1, "y": 2}),
            json!({"y": 2, "x": 1}),
            json!("0x0"),
        );
        let answers = [("a", &x), ("b", &y), ("c", &zero)];
        let (value, dissent) = agree(&answers, 2).expect("a and b agree");
        assert_eq!(*value, json!({"x": 1, "y": 2}));
        assert_eq!(dissent, ["c"]);
        // One operator twice is one vote.
        let (one, two) = (json!(1), json!(2));
        assert!(agree(&[("a", &one), ("a", &one), ("b", &two)], 2).is_none());
    }
}
