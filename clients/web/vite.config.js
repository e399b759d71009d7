import { defineConfig } from "vite";

// The app is a single page: every path (e.g. the deep link /jobs/{jobId}) loads index.html.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // model-viewer (three.js) is a separate chunk, loaded only when a GLB is shown.
    chunkSizeWarningLimit: 1500,
  },
});
