import { defineConfig } from "vitest/config";
import preact from "@preact/preset-vite";

// `npm run dev` serves the app on :5173 and sends API calls to a running gateway
// (MERCATO_GATEWAY, http://127.0.0.1:8080 by default), so the session cookie stays same-origin.
const gateway = process.env.MERCATO_GATEWAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [preact()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Every asset is a file under dist/assets, named after its content; nothing is inlined,
    // so the page's CSP can forbid data: scripts and the gateway can cache assets forever.
    assetsInlineLimit: 0,
    sourcemap: false,
    target: "es2022",
  },
  server: {
    proxy: { "/api": gateway, "/openapi.json": gateway },
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
