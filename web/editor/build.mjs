// Bundle entry.js into one file the gateway serves, and gather the licence of every package in it.
// Run `npm ci && npm run build` here after changing a version; the output is committed (no CDN, no build at install).
import {build} from "esbuild";
import {readFileSync, writeFileSync, existsSync} from "node:fs";
import {dirname, join} from "node:path";

const out = "../../saferoom/server/static";
const result = await build({
  entryPoints: ["entry.js"], bundle: true, format: "iife", globalName: "SaferoomEditor", minify: true,
  target: "es2020", outfile: join(out, "editor.js"), metafile: true, legalComments: "none",
});

// One section per bundled package: name, version, and its licence text as shipped in the package.
const packages = new Set(Object.keys(result.metafile.inputs).filter(p => p.startsWith("node_modules/"))
  .map(p => p.split("/").slice(0, p.split("/")[1].startsWith("@") ? 3 : 2).join("/")));
const sections = [...packages].sort().map(folder => {
  const meta = JSON.parse(readFileSync(join(folder, "package.json"), "utf8"));
  const file = ["LICENSE", "LICENSE.md", "LICENSE.txt"].map(f => join(folder, f)).find(existsSync);
  if (!file) throw new Error(`${meta.name} ships no licence file; it cannot be bundled`);
  return `${meta.name} ${meta.version} (${meta.license})\n\n${readFileSync(file, "utf8").trim()}\n`;
});
writeFileSync(join(out, "editor.LICENSES.txt"),
  "The web page's editor (editor.js) bundles these packages, each under its own licence:\n\n" +
  sections.join("\n" + "-".repeat(72) + "\n\n"));
console.log(`editor.js: ${Object.keys(result.metafile.outputs).length} file, ${packages.size} packages`);
