// The web page's SQL editor: highlighting, completion from the caller's own catalog, Ctrl/Cmd-Enter to run.
// Bundled by build.mjs into saferoom/server/static/editor.js; the page reaches it as window.SaferoomEditor.
import {EditorState, Compartment} from "@codemirror/state";
import {EditorView, keymap, lineNumbers, highlightActiveLine, drawSelection, placeholder} from "@codemirror/view";
import {defaultKeymap, history, historyKeymap, indentWithTab} from "@codemirror/commands";
import {syntaxHighlighting, defaultHighlightStyle, bracketMatching} from "@codemirror/language";
import {autocompletion, closeBrackets, closeBracketsKeymap, completionKeymap} from "@codemirror/autocomplete";
import {sql, PostgreSQL} from "@codemirror/lang-sql";

// The catalog as lang-sql's schema: {"prod.orders": ["region", ...]}, so both `orders` after `prod.` and
// the columns of a table named in the query complete; only what the caller may see is ever offered.
function language(schema) {
  return sql({dialect: PostgreSQL, schema, upperCaseKeywords: false});
}

export function create(parent, {doc = "", onRun = () => {}, onChange = () => {}} = {}) {
  const lang = new Compartment();
  const run = () => { onRun(); return true; };
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        lineNumbers(), history(), drawSelection(), highlightActiveLine(), bracketMatching(), closeBrackets(),
        syntaxHighlighting(defaultHighlightStyle, {fallback: true}), autocompletion(),
        placeholder("select … from …"),
        keymap.of([{key: "Mod-Enter", run}, {key: "Shift-Enter", run}, indentWithTab,
                   ...closeBracketsKeymap, ...completionKeymap, ...historyKeymap, ...defaultKeymap]),
        lang.of(language({})),
        EditorView.updateListener.of(update => { if (update.docChanged) onChange(); }),
        EditorView.lineWrapping,
      ],
    }),
  });
  return {
    view,
    get value() { return view.state.doc.toString(); },
    set value(text) { view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: text}}); },
    setSchema(schema) { view.dispatch({effects: lang.reconfigure(language(schema))}); },
    focus() { view.focus(); },
  };
}
