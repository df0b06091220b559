package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeTree writes files (slash-separated path -> content) under a new
// directory and returns it.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const goodWork = `go 1.26.0

use (
	.
	./cmd/tool
	./internal/dev
	./lib
)

replace (
	example.com/m v0.1.0 => ./
	example.com/m/lib v0.1.0 => ./lib
	example.com/m/cmd/tool v0.1.0 => ./cmd/tool
)
`

func goodTree() map[string]string {
	return map[string]string{
		"go.work":                  goodWork,
		"go.mod":                   "module example.com/m\n\ngo 1.25.0\n",
		"go.sum":                   "example.com/other v1.0.0/go.mod h1:x=\n",
		"lib/go.mod":               "module example.com/m/lib\n\ngo 1.25.0\n\nrequire example.com/m v0.1.0\n",
		"cmd/tool/go.mod":          "module example.com/m/cmd/tool\n\ngo 1.25.0\n\nrequire (\n\texample.com/m v0.1.0\n\texample.com/m/lib v0.1.0\n)\n",
		"internal/dev/go.mod":      "module example.com/m/internal/dev\n\ngo 1.25.0\n",
		"testdata/x/go.mod":        "module example.com/ignored\n",
		"lib/testdata/y/go.mod":    "module example.com/ignored/too\n",
		".hidden/go.mod":           "module example.com/hidden\n",
		"lib/_scratch/z/go.mod":    "module example.com/scratch\n",
		"lib/vendor/dep/go.mod":    "module example.com/vendored\n",
		"cmd/tool/main.go":         "package main\n\nfunc main() {}\n",
		"lib/lib.go":               "package lib\n",
		"internal/dev/main.go":     "package main\n\nfunc main() {}\n",
		"README.md":                "root\n",
		"lib/testdata/fixture.txt": "fixture\n",
	}
}

func loadTree(t *testing.T, root string) *tree {
	t.Helper()
	tr, err := load(root)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestModulesAndTags(t *testing.T) {
	tr := loadTree(t, writeTree(t, goodTree()))
	var dirs, tags []string
	for _, m := range tr.mods {
		dirs = append(dirs, m.dir)
		if m.released() {
			tags = append(tags, m.tag("v0.1.0"))
		}
	}
	if want := []string{".", "internal/dev", "lib", "cmd/tool"}; !slices.Equal(dirs, want) {
		t.Errorf("modules %q, want %q (dependencies first; testdata, vendor, . and _ directories skipped)", dirs, want)
	}
	if want := []string{"v0.1.0", "lib/v0.1.0", "cmd/tool/v0.1.0"}; !slices.Equal(tags, want) {
		t.Errorf("tags %q, want %q", tags, want)
	}
	v, err := tr.check()
	if err != nil || v != "v0.1.0" {
		t.Fatalf("check = %q, %v; want v0.1.0", v, err)
	}
}

func TestCheckRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(files map[string]string)
		want   string
	}{
		{"a replace in a go.mod", func(f map[string]string) {
			f["lib/go.mod"] += "\nreplace example.com/m => ../\n"
		}, "lib/go.mod: replace directives"},
		{"a module go.work does not use", func(f map[string]string) {
			f["new/go.mod"] = "module example.com/m/new\n\ngo 1.25.0\n\nrequire example.com/m v0.1.0\n"
		}, "go.work: does not use ./new"},
		{"go.work uses a directory that is no module", func(f map[string]string) {
			f["go.work"] = strings.Replace(goodWork, "\t./lib\n", "\t./lib\n\t./gone\n", 1)
		}, "go.work: uses ./gone"},
		{"two versions", func(f map[string]string) {
			f["cmd/tool/go.mod"] = strings.Replace(f["cmd/tool/go.mod"], "example.com/m v0.1.0", "example.com/m v0.0.9", 1)
		}, "more than one version"},
		{"not a release version", func(f map[string]string) {
			for _, name := range []string{"lib/go.mod", "cmd/tool/go.mod"} {
				f[name] = strings.ReplaceAll(f[name], "v0.1.0", "v0.0.0-20260101000000-abcdefabcdef")
			}
		}, "not a release version"},
		{"a go.sum line for a module of the repository", func(f map[string]string) {
			f["lib/go.sum"] = "example.com/m v0.1.0 h1:x=\n"
		}, "lib/go.sum: a line for example.com/m v0.1.0"},
		{"a released module requiring a tool", func(f map[string]string) {
			f["lib/go.mod"] += "require example.com/m/internal/dev v0.1.0\n"
		}, "a tool of the repository"},
		{"a required module that is not in the tree", func(f map[string]string) {
			f["lib/go.mod"] += "require example.com/m/missing v0.1.0\n"
		}, "example.com/m/missing, which is not a module of the repository"},
		{"go.work without the replace of a released module", func(f map[string]string) {
			f["go.work"] = strings.Replace(goodWork, "\texample.com/m/lib v0.1.0 => ./lib\n", "", 1)
		}, "go.work: no replace example.com/m/lib v0.1.0 => ./lib"},
		{"go.work replacing at another version", func(f map[string]string) {
			f["go.work"] = strings.Replace(goodWork, "example.com/m/lib v0.1.0 => ./lib", "example.com/m/lib v0.0.9 => ./lib", 1)
		}, "want example.com/m/lib v0.1.0 => ./lib"},
		{"go.work replacing a tool", func(f map[string]string) {
			f["go.work"] = strings.Replace(goodWork, "replace (\n", "replace (\n\texample.com/m/internal/dev v0.1.0 => ./internal/dev\n", 1)
		}, "not a released module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := goodTree()
			tc.mutate(files)
			tr, err := load(writeTree(t, files))
			if err == nil {
				_, err = tr.check()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestBump(t *testing.T) {
	files := goodTree()
	files["lib/go.sum"] = "example.com/m v0.1.0 h1:x=\nexample.com/m v0.1.0/go.mod h1:y=\nexample.com/other v1.0.0/go.mod h1:x=\n"
	files["new/go.mod"] = "module example.com/m/new\n\ngo 1.25.0\n\nrequire example.com/m v0.1.0\n"
	root := writeTree(t, files)
	if err := loadTree(t, root).bump("v0.2.0-rc.1"); err != nil {
		t.Fatal(err)
	}
	tr := loadTree(t, root)
	v, err := tr.check()
	if err != nil || v != "v0.2.0-rc.1" {
		t.Fatalf("after bump, check = %q, %v; want v0.2.0-rc.1", v, err)
	}
	sum, _ := os.ReadFile(filepath.Join(root, "lib", "go.sum"))
	if string(sum) != "example.com/other v1.0.0/go.mod h1:x=\n" {
		t.Errorf("lib/go.sum after bump:\n%s\nwant only the line of example.com/other", sum)
	}
	work, _ := os.ReadFile(filepath.Join(root, "go.work"))
	if !strings.Contains(string(work), "\t./new\n") || !strings.Contains(string(work), "example.com/m/new v0.2.0-rc.1 => ./new") {
		t.Errorf("go.work after bump does not use and replace ./new:\n%s", work)
	}
	for _, bad := range []string{"0.2.0", "v0.2", "v0.2.0+meta", "v1.2.3.4", "v0.0.0-20260101000000-abcdefabcdef", ""} {
		if err := tr.bump(bad); err == nil {
			t.Errorf("bump(%q) succeeded", bad)
		}
	}
}

func TestStage(t *testing.T) {
	root := writeTree(t, goodTree())
	tr := loadTree(t, root)
	dir := t.TempDir()
	if err := tr.stage(dir, "v0.1.0"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"proxy/example.com/m/@v/v0.1.0.zip", "proxy/example.com/m/@v/v0.1.0.mod",
		"proxy/example.com/m/@v/v0.1.0.info", "proxy/example.com/m/@v/list",
		"proxy/example.com/m/lib/@v/v0.1.0.zip", "proxy/example.com/m/cmd/tool/@v/v0.1.0.zip",
	} {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(name))); err != nil {
			t.Errorf("stage: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "proxy/example.com/m/internal/dev")); err == nil {
		t.Error("stage published a tool of the repository")
	}
	sum, err := os.ReadFile(filepath.Join(dir, "mod", "cmd", "tool", "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range sumLines(sum) {
		got = append(got, l.mod.Path+" "+l.mod.Version)
	}
	if want := []string{"example.com/m v0.1.0", "example.com/m v0.1.0/go.mod", "example.com/m/lib v0.1.0", "example.com/m/lib v0.1.0/go.mod"}; !slices.Equal(got, want) {
		t.Errorf("staged cmd/tool/go.sum lists %q, want %q", got, want)
	}
	if sum, _ := os.ReadFile(filepath.Join(dir, "mod", "go.sum")); string(sum) != "example.com/other v1.0.0/go.mod h1:x=\n" {
		t.Errorf("staged go.sum of the root:\n%s\nwant the tree's", sum)
	}
}
