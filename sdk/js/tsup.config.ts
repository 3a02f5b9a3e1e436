import { defineConfig } from "tsup";

// One ESM and one CJS build with their type declarations (index.d.ts, index.d.cts). In the CJS
// build, esbuild turns the helpers' `import("openai")` into `require("openai")`, so each build
// loads the official clients in the module system its caller uses (one copy of each class).
export default defineConfig({
  entry: ["src/index.ts"],
  format: ["esm", "cjs"],
  dts: true,
  platform: "node",
  target: "node20",
  sourcemap: true,
  clean: true,
  splitting: false,
  esbuildOptions(options, { format }) {
    options.define = { ...options.define, __COSTR_CJS__: format === "cjs" ? "true" : "false" };
  },
  external: ["openai", "@anthropic-ai/sdk", "@google/genai", "@ai-sdk/openai", "@ai-sdk/anthropic", "@ai-sdk/google", "undici"],
});
