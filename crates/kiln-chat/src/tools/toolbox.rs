//! [`ToolBox`]: the tools a chat, an eval or a server plugs into the runtime — the sandboxed
//! Python of kiln-sandbox and a search index — with a readable answer for a tool that is off.

use crate::tools::lessons::SEARCH_TOP_K;
use crate::tools::runtime::{Tool, ToolRunner};
use crate::tools::search::SearchIndex;
use kiln_sandbox::{Limits, Sandbox};

/// The enabled tools. A call to a disabled one gets an error line the model can read.
pub struct ToolBox {
    pub code: Option<(Sandbox, Limits)>,
    pub search: Option<SearchIndex>,
}

impl ToolBox {
    /// No tools: every call is answered "not available".
    pub fn none() -> ToolBox {
        ToolBox {
            code: None,
            search: None,
        }
    }
}

impl ToolBox {
    /// What a call of `tool` on `input` returns (shared: the sandbox and the index are read-only,
    /// so several calls may run at once, as RL rollouts do).
    pub fn answer(&self, tool: Tool, input: &str) -> String {
        match (tool, &self.code, &self.search) {
            (Tool::Code, Some((sandbox, limits)), _) => sandbox.run(input.as_bytes(), limits).text,
            (Tool::Search, _, Some(index)) => index.answer(input, SEARCH_TOP_K),
            (Tool::Code, None, _) => "error: the code tool is not available here\n".into(),
            (Tool::Search, _, None) => "error: the search tool is not available here\n".into(),
        }
    }
}

impl ToolRunner for ToolBox {
    fn run(&mut self, tool: Tool, input: &str) -> String {
        self.answer(tool, input)
    }
}

/// A shared box runs calls too (its tools are read-only): a server's call threads share one.
impl ToolRunner for &ToolBox {
    fn run(&mut self, tool: Tool, input: &str) -> String {
        self.answer(tool, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_tools_answer_readably_and_search_answers_from_its_index() {
        let mut none = ToolBox::none();
        assert!(none.run(Tool::Code, "print(1)").contains("not available"));
        assert!(none.run(Tool::Search, "x").contains("not available"));
        let mut tb = ToolBox {
            code: None,
            search: Some(SearchIndex::build([(
                "doc/a",
                "The kiln fires at 1200 degrees.",
            )])),
        };
        let out = tb.run(Tool::Search, "kiln degrees");
        assert!(out.contains("doc/a") && out.contains("1200"), "{out}");
    }
}
