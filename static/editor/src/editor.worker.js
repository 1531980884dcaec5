// Monaco's editor worker (diffing, word ranges, links): the second esbuild entry point.
import "monaco-editor/editor/editor.worker.js";
