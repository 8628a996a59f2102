//! Source locations: where in the build's source file (the Dockerfile) a vertex came
//! from. The frontend's errors point with the same type.

use std::fmt;

/// A position in a Dockerfile: 1-based line, 1-based column (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, or 0 when only the line is known.
    pub column: usize,
}

/// A range of lines (inclusive) in a Dockerfile, with an optional start column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Range {
    /// Where the range begins.
    pub start: Position,
    /// Where the range ends (line inclusive).
    pub end: Position,
}

impl Range {
    /// A range covering whole lines `start..=end`.
    pub fn lines(start: usize, end: usize) -> Range {
        Range {
            start: Position {
                line: start,
                column: 0,
            },
            end: Position {
                line: end.max(start),
                column: 0,
            },
        }
    }

    /// The same range with a start column.
    pub fn with_column(mut self, column: usize) -> Range {
        self.start.column = column;
        self
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start.line, self.start.column.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_line_and_column_one_based() {
        assert_eq!(Range::lines(3, 1).to_string(), "3:1");
        assert_eq!(Range::lines(3, 1).end.line, 3, "end is never before start");
        assert_eq!(Range::lines(2, 4).with_column(5).to_string(), "2:5");
    }
}
