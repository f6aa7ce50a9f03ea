; aifinops Windows installer (Inno Setup 6.3 or later).
;
; Build (on Windows, after `pyinstaller build.spec --noconfirm` produced dist\aifinops\):
;   iscc packaging\windows\aifinops.iss /DAppVersion=0.1.0
; Output: dist\aifinops-<version>-setup.exe. The CI workflow .github/workflows/installers.yml
; does exactly this on windows-latest; the Linux dev machine cannot build it.
;
; Install silently (IT), see docs/DEPLOY.md:
;   aifinops-0.1.0-setup.exe /VERYSILENT /SUPPRESSMSGBOXES /NORESTART ^
;       /SHARE="\\fileserver\aifinops" /PUBKEY="ed25519:Vb1k...="
;   /MERGETASKS="!machineagent"   no agent at boot: each user's tray starts their own agent
;   /MERGETASKS="!trayatlogon"    no tray at logon (a headless GPU box)
; Uninstall silently: "C:\Program Files\aifinops\unins000.exe" /VERYSILENT [/PURGE]
;
; What it does:
; - copies the PyInstaller one-folder bundle (aifinops.exe: CLI and agent; aifinops-tray.exe:
;   the tray) to C:\Program Files\aifinops. An upgrade replaces _internal\ entirely.
; - machine agent (task "machineagent", on by default): a Task Scheduler task "aifinops-agent"
;   that starts `aifinops.exe --home C:\ProgramData\aifinops --config ...\config.toml agent run`
;   at boot as NT AUTHORITY\LOCAL SERVICE. Why a task and not a service: aifinops.exe is a plain console
;   program; a Windows service must answer the Service Control Manager (StartServiceCtrlDispatcher),
;   which it does not, so registering it with `sc create` would fail to start after 30 s. A boot
;   task needs no wrapper (WinSW, NSSM) to ship and audit. The task has no run-time limit
;   (schtasks /SC ONSTART alone would kill it after 72 hours) and is restarted by Task Scheduler
;   up to 3 times, a minute apart, if it fails to start.
; - C:\ProgramData\aifinops holds the machine agent's config\, data\ (ledger), logs\, cache\.
;   Its ACL is reset to SYSTEM + Administrators (full) + LOCAL SERVICE (modify): users cannot
;   read the ledger or the service's admin token. config\config.toml alone is readable by Users.
; - config\config.toml is written on first install only (an upgrade keeps an edited file): the
;   commented default config of the bundle with [share] path and public_keys from /SHARE and
;   /PUBKEY (a comma-separated list for key rotation).
; - the machine-wide environment variable AIFINOPS_CONFIG points every aifinops process (the
;   machine agent, each user's tray, an agent a tray starts, the CLI) at that one company config,
;   as /etc/aifinops/config.toml does on Linux. Data, token and logs of per-user agents stay in
;   each user's %LOCALAPPDATA%\aifinops.
; - the tray starts at every user's logon (task "trayatlogon": an "All Users" Startup shortcut).
; - uninstall stops and deletes the task and the environment variable; it keeps
;   C:\ProgramData\aifinops unless /PURGE is given (interactive: it asks).

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
; The PyInstaller output, relative to this script (override: /DDistDir=C:\path\to\dist\aifinops).
#ifndef DistDir
  #define DistDir "..\..\dist\aifinops"
#endif
#define AppName "aifinops"
#define TaskName "aifinops-agent"

[Setup]
; Never change AppId: it is how an upgrade finds the installed copy (and keeps its folder).
AppId={{6C1F4E0A-8D3B-4B6E-9A57-2F0C9D41E7B3}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=aifinops
AppPublisherURL=https://github.com/aifinops/aifinops
VersionInfoVersion={#AppVersion}
PrivilegesRequired=admin
DefaultDirName={autopf}\{#AppName}
UsePreviousAppDir=yes
UsePreviousTasks=yes
DisableDirPage=auto
DisableProgramGroupPage=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
ChangesEnvironment=yes
; The Restart Manager closes running trays (and agents they started) before files are replaced.
CloseApplications=yes
RestartApplications=no
UninstallDisplayIcon={app}\aifinops-tray.exe
UninstallDisplayName={#AppName}
OutputDir=..\..\dist
OutputBaseFilename={#AppName}-{#AppVersion}-setup
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
SetupLogging=yes
#ifdef IconFile
SetupIconFile={#IconFile}
#endif

[Tasks]
Name: "machineagent"; Description: "Run the agent for the whole machine at boot (shared GPU box, managed workstation)"
Name: "trayatlogon"; Description: "Start the aifinops tray when a user logs on"

[InstallDelete]
; Files of an older version that the new bundle no longer has must not linger beside it.
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#DistDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Dirs]
Name: "{commonappdata}\{#AppName}"; Flags: uninsneveruninstall
Name: "{commonappdata}\{#AppName}\config"; Flags: uninsneveruninstall

[Icons]
Name: "{autoprograms}\aifinops"; Filename: "{app}\aifinops-tray.exe"; Comment: "AI spend and chat"
Name: "{commonstartup}\aifinops"; Filename: "{app}\aifinops-tray.exe"; Tasks: trayatlogon

[Registry]
; Every aifinops process reads the one company config (see the header).
Root: HKLM; Subkey: "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"; \
    ValueType: string; ValueName: "AIFINOPS_CONFIG"; \
    ValueData: "{commonappdata}\{#AppName}\config\config.toml"; Flags: uninsdeletevalue

[Run]
Filename: "{app}\aifinops-tray.exe"; Description: "Start the aifinops tray now"; \
    Flags: nowait postinstall skipifsilent runasoriginaluser; Tasks: trayatlogon

[UninstallRun]
; Trays and the agents they started hold files open in {app}.
Filename: "{sys}\taskkill.exe"; Parameters: "/F /T /IM aifinops-tray.exe"; Flags: runhidden; RunOnceId: "KillTray"
Filename: "{sys}\taskkill.exe"; Parameters: "/F /T /IM aifinops.exe"; Flags: runhidden; RunOnceId: "KillAgent"

[Code]
function MachineHome(): String;
begin
  Result := ExpandConstant('{commonappdata}\{#AppName}');
end;

function HasSwitch(const Name: String): Boolean;
var
  I: Integer;
begin
  Result := False;
  for I := 1 to ParamCount do
    if CompareText(ParamStr(I), '/' + Name) = 0 then
      Result := True;
end;

{ The Unicode code point at Text[I] (a surrogate pair counts once); Step says how many chars it took. }
function CodePointAt(const Text: String; I: Integer; var Step: Integer): Integer;
var
  Low: Integer;
begin
  Result := Ord(Text[I]);
  Step := 1;
  if (Result >= $D800) and (Result <= $DBFF) and (I < Length(Text)) then
  begin
    Low := Ord(Text[I + 1]);
    if (Low >= $DC00) and (Low <= $DFFF) then
    begin
      Result := $10000 + ((Result - $D800) shl 10) + (Low - $DC00);
      Step := 2;
    end;
  end;
end;

{ A TOML basic string in pure ASCII: backslash and quote escaped, anything beyond ASCII as
  \uXXXX or \UXXXXXXXX, so the file is the same bytes in every code page (and valid UTF-8). }
function TomlString(const Value: String): String;
var
  I, Code, Step: Integer;
begin
  Result := '"';
  I := 1;
  while I <= Length(Value) do
  begin
    Code := CodePointAt(Value, I, Step);
    if Code = Ord('\') then
      Result := Result + '\\'
    else if Code = Ord('"') then
      Result := Result + '\"'
    else if (Code < 32) or (Code = 127) then
      Result := Result + Format('\u%.4x', [Code])
    else if Code > 127 then
    begin
      if Code > $FFFF then
        Result := Result + Format('\U%.8x', [Code])
      else
        Result := Result + Format('\u%.4x', [Code]);
    end
    else
      Result := Result + Chr(Code);
    I := I + Step;
  end;
  Result := Result + '"';
end;

{ "ed25519:a, ed25519:b" -> ["ed25519:a", "ed25519:b"] }
function TomlStringList(const Csv: String): String;
var
  Rest, Item: String;
  P: Integer;
begin
  Result := '';
  Rest := Csv;
  while Rest <> '' do
  begin
    P := Pos(',', Rest);
    if P = 0 then
    begin
      Item := Rest;
      Rest := '';
    end
    else
    begin
      Item := Copy(Rest, 1, P - 1);
      Rest := Copy(Rest, P + 1, Length(Rest));
    end;
    Item := Trim(Item);
    if Item <> '' then
    begin
      if Result <> '' then
        Result := Result + ', ';
      Result := Result + TomlString(Item);
    end;
  end;
  Result := '[' + Result + ']';
end;

{ XML text in pure ASCII: markup characters and anything beyond ASCII as character references. }
function XmlEscape(const Value: String): String;
var
  I, Code, Step: Integer;
begin
  Result := '';
  I := 1;
  while I <= Length(Value) do
  begin
    Code := CodePointAt(Value, I, Step);
    if (Code > 127) or (Code = Ord('&')) or (Code = Ord('<')) or (Code = Ord('>')) or (Code = Ord('"')) then
      Result := Result + '&#' + IntToStr(Code) + ';'
    else
      Result := Result + Chr(Code);
    I := I + Step;
  end;
end;

{ A single-quoted PowerShell string. }
function PsQuote(const Value: String): String;
begin
  Result := Value;
  StringChangeEx(Result, , '', True);
  Result :=  + Result + ;
end;

function RunHidden(const FileName, Params: String): Integer;
var
  ResultCode: Integer;
begin
  if not Exec(FileName, Params, '', SW_HIDE, ewWaitUntilTerminated, ResultCode) then
    ResultCode := -1;
  Log(Format('%s %s -> %d', [FileName, Params, ResultCode]));
  Result := ResultCode;
end;

procedure StopAgentTask();
begin
  { /End terminates the process: SQLite's WAL keeps the ledger consistent; a request in flight
    at that instant is lost (it is not recorded as aborted). }
  RunHidden(ExpandConstant('{sys}\schtasks.exe'), '/End /TN "{#TaskName}"');
end;

procedure DeleteAgentTask();
begin
  StopAgentTask();
  RunHidden(ExpandConstant('{sys}\schtasks.exe'), '/Delete /F /TN "{#TaskName}"');
end;

procedure SecureMachineHome();
var
  Icacls: String;
begin
  Icacls := ExpandConstant('{sys}\icacls.exe');
  { SIDs, not names, so that localised Windows works: S-1-5-18 SYSTEM, S-1-5-32-544
    Administrators, S-1-5-19 LOCAL SERVICE, S-1-5-32-545 Users. }
  RunHidden(Icacls, '"' + MachineHome() + '" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F ' +
    '*S-1-5-32-544:(OI)(CI)F *S-1-5-19:(OI)(CI)M');
  RunHidden(Icacls, '"' + MachineHome() + '\config\config.toml" /grant *S-1-5-32-545:R');
end;

procedure WriteConfig();
var
  ConfigFile, Share, PubKeys: String;
  Text: String;
  Template: AnsiString;
begin
  ConfigFile := MachineHome() + '\config\config.toml';
  Share := ExpandConstant('{param:SHARE|}');
  PubKeys := ExpandConstant('{param:PUBKEY|}');
  if FileExists(ConfigFile) then
  begin
    if (Share <> '') or (PubKeys <> '') then
      Log('keeping the existing ' + ConfigFile + ': /SHARE and /PUBKEY apply on first install only');
    Exit;
  end;
  ForceDirectories(MachineHome() + '\config');
  { The bundle carries the agent's commented default config (agent/default_config.toml). }
  { It is pure ASCII (tests/unit/test_deploy_doc.py checks), so the Ansi load loses nothing. }
  if LoadStringFromFile(ExpandConstant('{app}\_internal\agent\default_config.toml'), Template) then
    Text := String(Template)
  else
  begin
    Log('no default_config.toml in the bundle: writing the [share] section only');
    Text := '# aifinops configuration; every key: docs/DEPLOY.md' + #13#10 + #13#10 +
      '[share]' + #13#10 + 'path = ""' + #13#10 + 'public_keys = []' + #13#10;
  end;
  if Share <> '' then
    StringChangeEx(Text, 'path = ""', 'path = ' + TomlString(Share), True);
  if PubKeys <> '' then
    StringChangeEx(Text, 'public_keys = []', 'public_keys = ' + TomlStringList(PubKeys), True);
  if SaveStringToFile(ConfigFile, AnsiString(Text), False) then
    Log('wrote ' + ConfigFile)
  else
    MsgBox('Could not write ' + ConfigFile, mbError, MB_OK);
end;

procedure RegisterAgentTask();
var
  Xml, XmlFile: String;
begin
  Xml :=
    '<?xml version="1.0" encoding="UTF-8"?>' + #13#10 +
    '<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">' + #13#10 +
    '  <RegistrationInfo><Author>aifinops installer</Author>' +
    '<Description>aifinops agent for this machine (OpenAI-compatible API on 127.0.0.1, spend ledger).</Description>' +
    '</RegistrationInfo>' + #13#10 +
    '  <Triggers><BootTrigger><Enabled>true</Enabled></BootTrigger></Triggers>' + #13#10 +
    '  <Principals><Principal id="Agent"><UserId>S-1-5-19</UserId><RunLevel>LeastPrivilege</RunLevel>' +
    '</Principal></Principals>' + #13#10 +
    '  <Settings>' +
    '<MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>' +
    '<DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>' +
    '<StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>' +
    '<AllowHardTerminate>true</AllowHardTerminate>' +
    '<StartWhenAvailable>true</StartWhenAvailable>' +
    '<RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>' +
    '<IdleSettings><StopOnIdleEnd>false</StopOnIdleEnd><RestartOnIdle>false</RestartOnIdle></IdleSettings>' +
    '<AllowStartOnDemand>true</AllowStartOnDemand>' +
    '<Enabled>true</Enabled>' +
    '<Hidden>false</Hidden>' +
    '<RunOnlyIfIdle>false</RunOnlyIfIdle>' +
    '<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>' +
    '<Priority>5</Priority>' +
    '<RestartOnFailure><Interval>PT1M</Interval><Count>3</Count></RestartOnFailure>' +
    '</Settings>' + #13#10 +
    '  <Actions Context="Agent"><Exec>' +
    '<Command>"' + XmlEscape(ExpandConstant('{app}\aifinops.exe')) + '"</Command>' +
    '<Arguments>--home "' + XmlEscape(MachineHome()) + '" --config "' +
    XmlEscape(MachineHome() + '\config\config.toml') + '" agent run</Arguments>' +
    '<WorkingDirectory>' + XmlEscape(MachineHome()) + '</WorkingDirectory>' +
    '</Exec></Actions>' + #13#10 +
    '</Task>' + #13#10;
  { XmlEscape keeps the text ASCII, so the file reads the same in any code page. It is
    registered through Register-ScheduledTask -Xml (a string: no file-encoding questions);
    -Command text is not subject to the script execution policy. }
  XmlFile := ExpandConstant('{tmp}\aifinops-agent-task.xml');
  if not SaveStringToFile(XmlFile, AnsiString(Xml), False) then
    RaiseException('could not write ' + XmlFile);
  if RunHidden(ExpandConstant('{sys}\WindowsPowerShell\v1.0\powershell.exe'),
    '-NoProfile -NonInteractive -Command "$ErrorActionPreference = ''Stop''; ' +
    'Register-ScheduledTask -TaskName ''{#TaskName}'' -Force -Xml (Get-Content -Raw -LiteralPath ' +
    PsQuote(XmlFile) + ') | Out-Null"') <> 0 then
    MsgBox('The aifinops agent task could not be registered; see the setup log.', mbError, MB_OK)
  else
    RunHidden(ExpandConstant('{sys}\schtasks.exe'), '/Run /TN "{#TaskName}"');
end;

function PrepareToInstall(var NeedsRestart: Boolean): String;
begin
  { An upgrade replaces aifinops.exe: the machine agent must not hold it open. }
  StopAgentTask();
  Result := '';
end;

procedure CurStepChanged(CurStep: TSetupStep);
begin
  if CurStep = ssPostInstall then
  begin
    WriteConfig();
    SecureMachineHome();
    if WizardIsTaskSelected('machineagent') then
      RegisterAgentTask()
    else
      DeleteAgentTask();  { switching an earlier machine install to per-user agents }
  end;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Purge: Boolean;
begin
  if CurUninstallStep = usUninstall then
    DeleteAgentTask();
  if CurUninstallStep = usPostUninstall then
  begin
    Purge := HasSwitch('PURGE');
    if (not Purge) and (not UninstallSilent()) then
      Purge := MsgBox('Also delete the machine agent''s ledger, tokens, config and logs in ' +
        MachineHome() + '?' + #13#10 + 'Choose No to keep them for a later install.',
        mbConfirmation, MB_YESNO or MB_DEFBUTTON2) = IDYES;
    if Purge then
    begin
      if DelTree(MachineHome(), True, True, True) then
        Log('purged ' + MachineHome())
      else
        Log('could not remove all of ' + MachineHome());
    end
    else
      Log('kept ' + MachineHome());
  end;
end;
