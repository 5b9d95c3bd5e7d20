//! The Prometheus text exposition format, written by hand for what Outlast renders
//! itself: the latency histograms (`durations`) and the state `status::scrape` reads at
//! scrape time. The recorder writes its own.

use std::fmt::Write as _;

/// One metric family: its HELP and TYPE lines, then its samples.
pub struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    /// A gauge family.
    pub fn new(out: &'a mut String, name: &str, help: &str) -> Self {
        Family::typed(out, name, help, "gauge")
    }

    pub fn typed(out: &'a mut String, name: &str, help: &str, kind: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    /// One sample; label values escaped as the format asks.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        Family::new(&mut out, "x", "help").sample("x", &[("a", "q\"\\\n")], 1.0);
        assert!(out.ends_with("x{a=\"q\\\"\\\\\\n\"} 1\n"), "{out}");
    }
}
