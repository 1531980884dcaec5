// Monaco, the Vim mode and the save keys: the heavy part of the editor, loaded with a dynamic
// import (code.js) so that the sign-in screen and the lists never wait for it.
import * as monaco from "monaco-editor/editor";
// The editor contributions a code editor needs, not all of features/register.all (no diff editor,
// inline completions, colour picker, code lens, ...: a quarter less to evaluate on each load).
// linesOperations is needed by Vim's `o`/`O` (editor.action.insertLineAfter).
import "monaco-editor/features/codicon/register.js";
import "monaco-editor/editor/contrib/bracketMatching/browser/bracketMatching.js";
import "monaco-editor/editor/contrib/clipboard/browser/clipboard.js";
import "monaco-editor/editor/contrib/comment/browser/comment.js";
import "monaco-editor/editor/contrib/contextmenu/browser/contextmenu.js";
import "monaco-editor/editor/contrib/cursorUndo/browser/cursorUndo.js";
import "monaco-editor/editor/contrib/dnd/browser/dnd.js";
import "monaco-editor/features/find/register.js";
import "monaco-editor/editor/contrib/folding/browser/folding.js";
import "monaco-editor/editor/contrib/gotoError/browser/gotoError.js";
import "monaco-editor/editor/standalone/browser/quickAccess/standaloneGotoLineQuickAccess.js";
import "monaco-editor/editor/standalone/browser/quickAccess/standaloneCommandsQuickAccess.js";
import "monaco-editor/editor/standalone/browser/quickAccess/standaloneHelpQuickAccess.js";
import "monaco-editor/editor/contrib/hover/browser/hoverContribution.js";
import "monaco-editor/editor/contrib/indentation/browser/indentation.js";
import "monaco-editor/editor/contrib/lineSelection/browser/lineSelection.js";
import "monaco-editor/editor/contrib/linesOperations/browser/linesOperations.js";
import "monaco-editor/editor/contrib/longLinesHelper/browser/longLinesHelper.js";
import "monaco-editor/editor/contrib/multicursor/browser/multicursor.js";
import "monaco-editor/editor/contrib/readOnlyMessage/browser/contribution.js";
import "monaco-editor/editor/contrib/smartSelect/browser/smartSelect.js";
import "monaco-editor/editor/contrib/snippet/browser/snippetController2.js";
import "monaco-editor/editor/contrib/suggest/browser/suggestController.js";
import "monaco-editor/editor/contrib/toggleTabFocusMode/browser/toggleTabFocusMode.js";
import "monaco-editor/editor/contrib/tokenization/browser/tokenization.js";
import "monaco-editor/editor/contrib/unicodeHighlighter/browser/unicodeHighlighter.js";
import "monaco-editor/editor/contrib/unusualLineTerminators/browser/unusualLineTerminators.js";
import "monaco-editor/editor/contrib/wordHighlighter/browser/wordHighlighter.js";
import "monaco-editor/editor/contrib/wordOperations/browser/wordOperations.js";
import * as handlebars from "monaco-editor/languages/definitions/handlebars/handlebars.js"; // Mustache
import * as html from "monaco-editor/languages/definitions/html/html.js";
import * as javascript from "monaco-editor/languages/definitions/javascript/javascript.js"; // JSON values, specs
import * as python from "monaco-editor/languages/definitions/python/python.js"; // Starlark
import * as sql from "monaco-editor/languages/definitions/sql/sql.js";
import { initVimMode, VimMode } from "monaco-vim";

// Syntax highlighting (Monarch) for the few languages a cenv has, registered at once rather than
// through Monaco's lazy loaders (which would be five more files to fetch).
for (const [id, def] of Object.entries({ handlebars, html, javascript, python, sql })) {
  monaco.languages.register({ id });
  monaco.languages.setMonarchTokensProvider(id, def.language);
  monaco.languages.setLanguageConfiguration(id, def.conf);
}

const workerUrl = document.querySelector('meta[name="wce-worker"]').content;
self.MonacoEnvironment = { getWorker: () => new Worker(workerUrl, { type: "module", name: "monaco-editor" }) };
window.monaco = monaco; // for tests and the curious: monaco.editor.getModels()

/** env: {host, vimStatus, cursorStatus, vimEnabled(), save(), changed()} from code.js */
export function init(env) {
  let editor = null;
  let vim = null;
  const models = new Set();

  VimMode.Vim.defineEx("write", "w", () => env.save());
  VimMode.Vim.defineEx("update", "up", () => env.save());

  function applyVim() {
    const on = env.vimEnabled();
    if (on && !vim) {
      vim = initVimMode(editor, env.vimStatus);
    } else if (!on && vim) {
      vim.dispose();
      vim = null;
      env.vimStatus.replaceChildren();
    }
  }

  function ensureEditor() {
    if (editor) return editor;
    editor = monaco.editor.create(env.host, {
      model: null,
      theme: "vs-dark",
      automaticLayout: true,
      minimap: { enabled: false },
      fontSize: 13,
      renderWhitespace: "selection",
      scrollBeyondLastLine: false,
      tabSize: 4,
      insertSpaces: true,
      fixedOverflowWidgets: true,
    });
    editor.addCommand(monaco.KeyMod.CtrlCmd | monaco.KeyCode.KeyS, () => env.save());
    editor.onDidChangeCursorPosition((e) => {
      env.cursorStatus.textContent = `Ln ${e.position.lineNumber}, Col ${e.position.column}`;
    });
    editor.onDidChangeModelContent(() => env.changed());
    window.wceEditor = editor;
    applyVim();
    return editor;
  }

  return {
    ensureEditor,
    applyVim: () => { if (editor) applyVim(); },

    createModel(value, language, name) {
      const model = monaco.editor.createModel(value, language, monaco.Uri.from({ scheme: "wce", path: "/" + name }));
      models.add(model);
      return model;
    },

    disposeModels(list) {
      for (const m of list) {
        if (!m) continue;
        if (editor && editor.getModel() === m) editor.setModel(null);
        models.delete(m);
        m.dispose();
      }
    },

    show(model) {
      ensureEditor().setModel(model);
      const p = editor.getPosition();
      env.cursorStatus.textContent = p ? `Ln ${p.lineNumber}, Col ${p.column}` : "";
    },

    focus() { if (editor) editor.focus(); },

    setMarkers(model, list) {
      if (model.isDisposed()) return;
      monaco.editor.setModelMarkers(model, "wce", list.map((m) => {
        const line = Math.min(Math.max(1, m.line || 1), model.getLineCount());
        const column = Math.max(1, m.column || 1);
        const endColumn = Math.max(column + 1, model.getLineMaxColumn(line));
        return {
          startLineNumber: line, startColumn: column, endLineNumber: line, endColumn,
          message: m.message,
          severity: m.severity === "warning" ? monaco.MarkerSeverity.Warning : monaco.MarkerSeverity.Error,
        };
      }));
    },

    clearMarkers(model) { if (!model.isDisposed()) monaco.editor.setModelMarkers(model, "wce", []); },

    reveal(model, line, column) {
      if (!editor || editor.getModel() !== model) return;
      editor.revealLineInCenter(line);
      editor.setPosition({ lineNumber: line, column: column || 1 });
    },
  };
}
