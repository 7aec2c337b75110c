// Builds the web chat page into OUTDIR (index.html and assets/):
//   node build.mjs --proto ../proto/imchat/v1/im.proto --outdir dist
// 1. compiles the project's own proto/imchat/v1/im.proto into a static
//    protobufjs module (pbjs -t static-module: encoders as plain code, no
//    eval, so the page keeps a CSP without 'unsafe-eval');
// 2. bundles src/app.js (and its CSS) with esbuild into content-hashed
//    assets/app-HASH.js and assets/app-HASH.css, not minified;
// 3. copies the other assets with a content hash in their names and
//    writes index.html from src/index.html with the hashed names.
// imchatd serves hashed names as immutable and index.html as no-cache.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
function arg(name) {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) {
    console.error(`build.mjs: missing ${name} (usage: node build.mjs --proto FILE --outdir DIR)`);
    process.exit(2);
  }
  return path.resolve(args[i + 1]);
}
const protoFile = arg('--proto');
const outdir = arg('--outdir');
const work = `${outdir}.tmp`;

for (const pkg of ['esbuild', 'protobufjs', 'protobufjs-cli']) {
  if (!fs.existsSync(path.join(here, 'node_modules', pkg, 'package.json'))) {
    console.error(`build.mjs: ${pkg} is missing: run "npm ci" in ${here}`);
    process.exit(1);
  }
}

fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(path.join(work, 'assets'), { recursive: true });

// 1. The protocol, from the .proto file.
const gen = path.join(work, 'im_pb.js');
execFileSync(process.execPath, [
  path.join(here, 'node_modules', 'protobufjs-cli', 'bin', 'pbjs'),
  '-t', 'static-module', '-w', 'es6', '--keep-case', '--no-comments', '--no-verify',
  '--no-convert', '--no-delimited', '--force-number', '-o', gen, protoFile,
], { stdio: 'inherit' });

// 2. The script and its style sheet.
const result = await esbuild.build({
  entryPoints: [path.join(here, 'src', 'app.js')],
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  outdir: path.join(work, 'assets'),
  entryNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  minify: false,
  sourcemap: false,
  legalComments: 'inline',
  metafile: true,
  logLevel: 'warning',
  nodePaths: [path.join(here, 'node_modules')],
  plugins: [{
    name: 'imchat-proto',
    setup(b) {
      b.onResolve({ filter: /^imchat-proto$/ }, () => ({ path: gen }));
    },
  }],
});
let js = '';
let css = '';
for (const [file, info] of Object.entries(result.metafile.outputs)) {
  if (info.entryPoint) js = path.basename(file);
  else if (file.endsWith('.css')) css = path.basename(file);
}
if (!js || !css) {
  console.error('build.mjs: esbuild produced no script or no style sheet');
  process.exit(1);
}
const bundle = fs.readFileSync(path.join(work, 'assets', js), 'utf8');
if (/\bnew Function\(|\beval\(/.test(bundle)) {
  console.error('build.mjs: the bundle uses eval or new Function, which the CSP refuses');
  process.exit(1);
}

// 3. Other assets, and index.html.
function hashed(src) {
  const data = fs.readFileSync(src);
  const h = createHash('sha256').update(data).digest('hex').slice(0, 8).toUpperCase();
  const ext = path.extname(src);
  const name = `${path.basename(src, ext)}-${h}${ext}`;
  fs.writeFileSync(path.join(work, 'assets', name), data);
  return name;
}
const icon = hashed(path.join(here, 'src', 'icon.svg'));
const html = fs.readFileSync(path.join(here, 'src', 'index.html'), 'utf8')
  .replaceAll('%APP_JS%', `/assets/${js}`)
  .replaceAll('%APP_CSS%', `/assets/${css}`)
  .replaceAll('%ICON%', `/assets/${icon}`);
fs.writeFileSync(path.join(work, 'index.html'), html);
fs.rmSync(gen);

fs.rmSync(outdir, { recursive: true, force: true });
fs.renameSync(work, outdir);
console.log(`web page: ${outdir} (${js}, ${css}, ${icon})`);
