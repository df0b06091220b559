// Command release keeps the modules of this repository releasable together:
// every module is tagged at one version, and every module's requirement of
// another module of the repository names that version.
//
// Usage, from anywhere in the repository:
//
//	go run ./internal/release modules       # module directories, dependencies first (-released, -paths)
//	go run ./internal/release check         # checks the rules below; prints the version
//	go run ./internal/release bump vX.Y.Z   # every requirement of the repository's modules to vX.Y.Z
//	go run ./internal/release tags          # the tags a release pushes, in order
//	go run ./internal/release stage DIR     # a file-system GOPROXY and go.mod copies (below)
//
// A module is a directory holding a go.mod, anywhere under the directory
// that holds go.work, except in testdata, vendor and directories whose name
// starts with "." or "_" (the go command ignores those too). Modules under an
// internal directory, like this one, are tools of the repository: they are
// vetted and tested, never tagged.
//
// The rules check enforces:
//   - no go.mod (nor go.work) has a replace directive, so that
//     `go install …@version` works and each module builds as a user builds it;
//   - go.work uses every module, and nothing else;
//   - every requirement of a module of the repository names one version,
//     the version the tree is released as;
//   - no go.sum holds a line for a module of the repository: that module's
//     content is known once it is tagged, and stage supplies the lines for
//     the tree.
//
// stage DIR writes DIR/proxy, a module proxy (GOPROXY=file://DIR/proxy)
// serving every released module at that version, zipped from the working
// tree as the go command zips a tag; and DIR/mod/<module>/go.mod and go.sum:
// each module's go.mod, and its go.sum plus the lines of the repository's
// modules it requires, for `go … -modfile=DIR/mod/<module>/go.mod`. With
// GOWORK=off, that proxy first in GOPROXY and GONOSUMDB naming the
// repository's module path, each module then builds exactly as a user of
// the release about to be tagged builds it, and the tree is left as it was.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/zip"
)

const usage = `usage: go run ./internal/release <command>

	modules        module directories, dependencies first
	               (-released: only the tagged ones; -paths: module paths)
	check          checks the release rules; prints the version the tree is released as
	bump VERSION   sets every requirement of the repository's modules to VERSION
	tags           the tags a release pushes, in the order to push them
	stage DIR      DIR/proxy: a file-system GOPROXY of the tree at its version;
	               DIR/mod/<module>/go.mod, go.sum: copies for -modfile
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "release: %v\n", err)
		os.Exit(1)
	}
}

func run(cmd string, args []string) error {
	fl := flag.NewFlagSet(cmd, flag.ContinueOnError)
	released := fl.Bool("released", false, "modules: only the modules that are tagged")
	paths := fl.Bool("paths", false, "modules: module paths rather than directories")
	if err := fl.Parse(args); err != nil {
		return err
	}
	args = fl.Args()
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := findRoot(wd)
	if err != nil {
		return err
	}
	tree, err := load(root)
	if err != nil {
		return err
	}
	switch {
	case cmd == "modules" && len(args) == 0:
		for _, m := range tree.mods {
			switch {
			case *released && !m.released():
			case *paths:
				fmt.Println(m.path)
			default:
				fmt.Println(m.dir)
			}
		}
		return nil
	case cmd == "check" && len(args) == 0:
		v, err := tree.check()
		if err != nil {
			return err
		}
		fmt.Println(v)
		return nil
	case cmd == "bump" && len(args) == 1:
		return tree.bump(args[0])
	case cmd == "tags" && len(args) == 0:
		v, err := tree.check()
		if err != nil {
			return err
		}
		for _, m := range tree.mods {
			if m.released() {
				fmt.Println(m.tag(v))
			}
		}
		return nil
	case cmd == "stage" && len(args) == 1:
		v, err := tree.check()
		if err != nil {
			return err
		}
		return tree.stage(args[0], v)
	}
	fmt.Fprint(os.Stderr, usage)
	return errors.New("bad usage")
}

// findRoot returns the closest directory at or above dir that holds go.work.
func findRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.work at or above %s", dir)
		}
	}
}

type tree struct {
	root   string
	mods   []*mod // dependencies first
	byPath map[string]*mod
}

type mod struct {
	dir   string // slash-separated, relative to the root; "." for the root
	path  string // module path
	gomod []byte
	file  *modfile.File
	gosum []byte // nil when absent
}

// released reports whether m is tagged: modules under an internal
// directory are the repository's tools.
func (m *mod) released() bool {
	return !slices.Contains(strings.Split(m.dir, "/"), "internal")
}

// tag is the name of m's tag at version v.
func (m *mod) tag(v string) string {
	if m.dir == "." {
		return v
	}
	return m.dir + "/" + v
}

// load finds and parses every module under root.
func load(root string) (*tree, error) {
	t := &tree{root: root, byPath: map[string]*mod{}}
	var mods []*mod
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if p != root && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Name() != "go.mod" {
			return nil
		}
		dir, err := filepath.Rel(root, filepath.Dir(p))
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		f, err := modfile.Parse(p, data, nil)
		if err != nil {
			return err
		}
		if f.Module == nil {
			return fmt.Errorf("%s: no module directive", p)
		}
		sum, err := os.ReadFile(filepath.Join(filepath.Dir(p), "go.sum"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		mods = append(mods, &mod{dir: filepath.ToSlash(dir), path: f.Module.Mod.Path, gomod: data, file: f, gosum: sum})
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, m := range mods {
		if o := t.byPath[m.path]; o != nil {
			return nil, fmt.Errorf("%s and %s both declare module %s", o.dir, m.dir, m.path)
		}
		t.byPath[m.path] = m
	}
	// Dependencies first: by depth (a module's depth is one more than its
	// deepest dependency's), then by directory, the root first.
	depth := map[*mod]int{}
	visiting := map[*mod]bool{}
	var visit func(m *mod) (int, error)
	visit = func(m *mod) (int, error) {
		if d, ok := depth[m]; ok {
			return d, nil
		}
		if visiting[m] {
			return 0, fmt.Errorf("module %s: the repository's modules require one another in a cycle", m.path)
		}
		visiting[m] = true
		d := 0
		for _, r := range m.file.Require {
			if dep := t.byPath[r.Mod.Path]; dep != nil {
				dd, err := visit(dep)
				if err != nil {
					return 0, err
				}
				d = max(d, dd+1)
			}
		}
		depth[m] = d
		return d, nil
	}
	for _, m := range mods {
		if _, err := visit(m); err != nil {
			return nil, err
		}
	}
	t.mods = mods
	sort.Slice(t.mods, func(i, j int) bool {
		a, b := t.mods[i], t.mods[j]
		if depth[a] != depth[b] {
			return depth[a] < depth[b]
		}
		if (a.dir == ".") != (b.dir == ".") {
			return a.dir == "."
		}
		return a.dir < b.dir
	})
	if len(t.mods) == 0 {
		return nil, fmt.Errorf("no go.mod under %s", root)
	}
	return t, nil
}

// inTree reports whether module path p is, or would be, one of the
// repository's: the root module's path or a path under it.
func (t *tree) inTree(p string) bool {
	if t.byPath[p] != nil {
		return true
	}
	for _, m := range t.mods {
		if m.dir == "." {
			return strings.HasPrefix(p, m.path+"/")
		}
	}
	return false
}

// check enforces the rules of the package doc and returns the version every
// requirement of the repository's modules names.
func (t *tree) check() (string, error) {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	wf, err := t.readWork()
	if err != nil {
		return "", err
	}
	used := map[string]bool{}
	for _, u := range wf.Use {
		d := path.Clean(filepath.ToSlash(u.Path))
		used[d] = true
		if !slices.ContainsFunc(t.mods, func(m *mod) bool { return m.dir == d }) {
			fail("go.work: uses %s, which is not a module of the repository", u.Path)
		}
	}
	versions := map[string][]string{} // version -> "dir requires path"
	for _, m := range t.mods {
		name := path.Join(m.dir, "go.mod")
		if !used[m.dir] {
			fail("go.work: does not use ./%s (go work use ./%s)", m.dir, m.dir)
		}
		if len(m.file.Replace) > 0 {
			fail("%s: replace directives: `go install …@version` refuses a module that has them, and a user's build ignores them", name)
		}
		for _, r := range m.file.Require {
			if !t.inTree(r.Mod.Path) {
				continue
			}
			dep := t.byPath[r.Mod.Path]
			switch {
			case dep == nil:
				fail("%s: requires %s, which is not a module of the repository", name, r.Mod.Path)
			case m.released() && !dep.released():
				fail("%s: requires %s, a tool of the repository that is never tagged", name, r.Mod.Path)
			}
			versions[r.Mod.Version] = append(versions[r.Mod.Version], fmt.Sprintf("%s requires %s %s", name, r.Mod.Path, r.Mod.Version))
		}
		for _, l := range sumLines(m.gosum) {
			if t.inTree(l.mod.Path) {
				fail("%s/go.sum: a line for %s %s: the repository's own modules have none (their content is known once tagged)", m.dir, l.mod.Path, l.mod.Version)
				break
			}
		}
	}
	var v string
	switch len(versions) {
	case 0:
		fail("no module requires another module of the repository: the version to release is unknown")
	case 1:
		for v = range versions {
		}
		if !validVersion(v) {
			fail("the modules require one another at %s, which is not a release version (vMAJOR.MINOR.PATCH)", v)
		}
	default:
		var all []string
		for _, list := range versions {
			all = append(all, list...)
		}
		sort.Strings(all)
		fail("the modules require one another at more than one version (go run ./internal/release bump VERSION):\n\t%s", strings.Join(all, "\n\t"))
	}
	if v != "" {
		// In the workspace, the version the modules require of one another
		// is the tree itself: the go command reads the go.mod of every
		// required version, workspace modules' included, and before a
		// version is tagged there is none to read but the tree's.
		want := map[string]string{}
		for _, m := range t.mods {
			if m.released() {
				want[m.path] = workDir(m.dir)
			}
		}
		for _, r := range wf.Replace {
			dir, ok := want[r.Old.Path]
			switch {
			case !ok:
				fail("go.work: replaces %s, which is not a released module of the repository", r.Old.Path)
			case r.Old.Version != v || r.New.Version != "" || path.Clean(filepath.ToSlash(r.New.Path)) != path.Clean(dir):
				fail("go.work: replace %s %s => %s; want %s %s => %s", r.Old.Path, r.Old.Version, strings.TrimSpace(r.New.Path+" "+r.New.Version), r.Old.Path, v, dir)
			}
			delete(want, r.Old.Path)
		}
		for p, dir := range want {
			fail("go.work: no replace %s %s => %s", p, v, dir)
		}
	}
	if len(errs) > 0 {
		errs = append(errs, errors.New("(go run ./internal/release bump VERSION sets them all)"))
		return "", errors.Join(errs...)
	}
	return v, nil
}

// workDir is the path by which a replace directive names the module in
// dir.
func workDir(dir string) string {
	if dir == "." {
		return "./"
	}
	return "./" + dir
}

// formatWork returns the go.work that uses every module and replaces each
// released module at version v by its directory, keeping wf's go and
// toolchain lines.
func (t *tree) formatWork(wf *modfile.WorkFile, v string) []byte {
	var b bytes.Buffer
	if wf.Go != nil {
		fmt.Fprintf(&b, "go %s\n", wf.Go.Version)
	}
	if wf.Toolchain != nil {
		fmt.Fprintf(&b, "\ntoolchain %s\n", wf.Toolchain.Name)
	}
	b.WriteString("\nuse (\n")
	var dirs []string
	for _, m := range t.mods {
		dirs = append(dirs, path.Clean(workDir(m.dir)))
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if d != "." {
			d = "./" + d
		}
		fmt.Fprintf(&b, "\t%s\n", d)
	}
	b.WriteString(")\n\n")
	b.WriteString("// The version the modules require of one another is the tree itself (the\n")
	b.WriteString("// go command reads the go.mod of each required version, even of a module\n")
	b.WriteString("// in the workspace). Written by go run ./internal/release bump VERSION.\n")
	b.WriteString("replace (\n")
	for _, m := range t.mods {
		if m.released() {
			fmt.Fprintf(&b, "\t%s %s => %s\n", m.path, v, workDir(m.dir))
		}
	}
	b.WriteString(")\n")
	return b.Bytes()
}

func (t *tree) readWork() (*modfile.WorkFile, error) {
	name := filepath.Join(t.root, "go.work")
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	return modfile.ParseWork(name, data, nil)
}

// validVersion reports whether v is a canonical semantic version with no
// build metadata, as a tag names it, and not a pseudo-version; a
// pre-release (v1.2.0-rc.1) is valid.
func validVersion(v string) bool {
	return semver.IsValid(v) && semver.Canonical(v) == v && semver.Build(v) == "" && !module.IsPseudoVersion(v)
}

// bump sets every requirement of the repository's modules to version v and
// drops the repository's own modules from every go.sum.
func (t *tree) bump(v string) error {
	if !validVersion(v) {
		return fmt.Errorf("%q is not a release version (vMAJOR.MINOR.PATCH, optionally -pre-release)", v)
	}
	for _, m := range t.mods {
		if err := m.file.AddModuleStmt(m.path); err != nil {
			return err
		}
		for _, r := range m.file.Require {
			if t.inTree(r.Mod.Path) && r.Mod.Version != v {
				if err := m.file.AddRequire(r.Mod.Path, v); err != nil {
					return err
				}
			}
		}
		m.file.Cleanup()
		data, err := m.file.Format()
		if err != nil {
			return err
		}
		dir := filepath.Join(t.root, filepath.FromSlash(m.dir))
		if !bytes.Equal(data, m.gomod) {
			if err := os.WriteFile(filepath.Join(dir, "go.mod"), data, 0o666); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%s: requirements now at %s\n", path.Join(m.dir, "go.mod"), v)
		}
		if m.gosum != nil {
			var keep []sumLine
			for _, l := range sumLines(m.gosum) {
				if !t.inTree(l.mod.Path) {
					keep = append(keep, l)
				}
			}
			if sum := formatSum(keep); !bytes.Equal(sum, m.gosum) {
				if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o666); err != nil {
					return err
				}
			}
		}
	}
	wf, err := t.readWork()
	if err != nil {
		return err
	}
	work := t.formatWork(wf, v)
	old, err := os.ReadFile(filepath.Join(t.root, "go.work"))
	if err != nil {
		return err
	}
	if !bytes.Equal(work, old) {
		if err := os.WriteFile(filepath.Join(t.root, "go.work"), work, 0o666); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "go.work: uses every module; replaces each released one at %s by its directory\n", v)
	}
	return nil
}

// stage writes dir/proxy and dir/mod as the package doc says.
func (t *tree) stage(dir, v string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{v, time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return err
	}
	sums := map[string][]sumLine{} // module path -> its two lines
	for _, m := range t.mods {
		if !m.released() {
			continue
		}
		esc, err := module.EscapePath(m.path)
		if err != nil {
			return err
		}
		vdir := filepath.Join(dir, "proxy", filepath.FromSlash(esc), "@v")
		if err := os.MkdirAll(vdir, 0o777); err != nil {
			return err
		}
		zipFile := filepath.Join(vdir, v+".zip")
		if err := writeZip(zipFile, module.Version{Path: m.path, Version: v}, filepath.Join(t.root, filepath.FromSlash(m.dir))); err != nil {
			return err
		}
		for name, data := range map[string][]byte{v + ".mod": m.gomod, v + ".info": info, "list": []byte(v + "\n")} {
			if err := os.WriteFile(filepath.Join(vdir, name), data, 0o666); err != nil {
				return err
			}
		}
		zh, err := dirhash.HashZip(zipFile, dirhash.Hash1)
		if err != nil {
			return err
		}
		mh, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(m.gomod)), nil
		})
		if err != nil {
			return err
		}
		sums[m.path] = []sumLine{
			{module.Version{Path: m.path, Version: v}, zh},
			{module.Version{Path: m.path, Version: v + "/go.mod"}, mh},
		}
	}
	for _, m := range t.mods {
		// The repository's modules that m needs, directly or not.
		need := map[string]bool{}
		var walk func(m *mod)
		walk = func(m *mod) {
			for _, r := range m.file.Require {
				if dep := t.byPath[r.Mod.Path]; dep != nil && !need[dep.path] {
					need[dep.path] = true
					walk(dep)
				}
			}
		}
		walk(m)
		lines := sumLines(m.gosum)
		for p := range need {
			lines = append(lines, sums[p]...)
		}
		mdir := filepath.Join(dir, "mod", filepath.FromSlash(m.dir))
		if err := os.MkdirAll(mdir, 0o777); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(mdir, "go.mod"), m.gomod, 0o666); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(mdir, "go.sum"), formatSum(lines), 0o666); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "release: staged the tree at %s in %s\n", v, dir)
	return nil
}

// writeZip zips the module in dir as the go command zips a module's
// version: without nested modules, vendor directories or VCS metadata.
func writeZip(name string, mv module.Version, dir string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := zip.CreateFromDir(f, mv, dir); err != nil {
		f.Close()
		return fmt.Errorf("zipping %s: %w", mv.Path, err)
	}
	return f.Close()
}

type sumLine struct {
	mod  module.Version // Version may end in /go.mod
	hash string
}

func sumLines(data []byte) []sumLine {
	var lines []sumLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 {
			lines = append(lines, sumLine{module.Version{Path: f[0], Version: f[1]}, f[2]})
		}
	}
	return lines
}

// formatSum writes lines in the go command's order, without duplicates.
func formatSum(lines []sumLine) []byte {
	slices.SortStableFunc(lines, func(a, b sumLine) int {
		if c := strings.Compare(a.mod.Path, b.mod.Path); c != 0 {
			return c
		}
		av, asuf, _ := strings.Cut(a.mod.Version, "/")
		bv, bsuf, _ := strings.Cut(b.mod.Version, "/")
		if c := semver.Compare(av, bv); c != 0 {
			return c
		}
		if c := strings.Compare(asuf, bsuf); c != 0 {
			return c
		}
		return strings.Compare(a.hash, b.hash)
	})
	var buf bytes.Buffer
	for i, l := range lines {
		if i > 0 && lines[i-1] == l {
			continue
		}
		fmt.Fprintf(&buf, "%s %s %s\n", l.mod.Path, l.mod.Version, l.hash)
	}
	return buf.Bytes()
}
